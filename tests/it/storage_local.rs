//! `storage check` on the local backend, as a user runs it.

use crate::helpers::worker_command;

#[test]
fn storage_check_command_leaves_nothing_in_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let vars = [(
        "MEMOJI__STORAGE__LOCAL_DIR",
        dir.path().display().to_string(),
    )];
    let output = worker_command(&vars)
        .args(["storage", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("storage check passed"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert!(
        left.is_empty(),
        "not even an empty _memoji-check/: {left:?}"
    );
}

//! [`FaultyProxy`]: a TCP proxy a test can cut and restore.

use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A TCP proxy in front of a server, which a test can cut (dropping every connection and refusing
/// new ones) and restore: a database outage without touching the shared database.
pub struct FaultyProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl FaultyProxy {
    pub async fn to(target: &str) -> FaultyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let target = target.to_owned();
        let (task_up, task_cut) = (up.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !task_up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let (target, cut) = (target.clone(), task_cut.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        FaultyProxy {
            port,
            up,
            cut,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

//! Settings as environment variables, both ways: [`Settings::to_environment`] writes the
//! variables that make a `memoji-worker` process read exactly these settings (what the tests and
//! `memoji-bench` start their worker processes with), and [`Settings::load_from_variables`] reads
//! a list of variables as [`Settings::load`] reads the process's, so the round trip is tested.
//!
//! Every setting is written, as `MEMOJI__SECTION__KEY` (open tables such as prices one variable
//! per entry), from the settings' `Serialize` form; so a key added to `Settings` travels to child
//! processes without being listed anywhere. The secrets, which never serialize, are written by
//! name: the two URLs as `MEMOJI__AMQP__URL` and `MEMOJI__DATABASE__URL`, the others under the
//! variables [`Settings::load`] reads them from (`OPENAI_API_KEY`, `ADMIN_TOKEN`, `MEMOJI_S3_…`,
//! `MEMOJI_SUPABASE_SERVICE_ROLE_KEY`). An entry that the defaults have and `settings` lost (a
//! removed price, say) cannot be expressed: a variable only adds or replaces.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{Settings, SettingsError, StorageSecrets};

impl Settings {
    /// The environment variables (name, value) that configure a worker process like `self`,
    /// secrets included: give them only to a child process, never to a log.
    ///
    /// Only the configuration: a caller that clears the child's environment adds `PATH` (and
    /// `RUST_LOG`) itself. Fails only if a setting has no environment form (a list).
    pub fn to_environment(&self) -> Result<Vec<(String, String)>, serde_json::Error> {
        let mut variables = Vec::new();
        flatten("MEMOJI", &serde_json::to_value(self)?, &mut variables)?;
        let secrets = &self.secrets;
        let storage = &secrets.storage;
        let mut secret = |name: &str, value: Option<&SecretString>| {
            if let Some(value) = value {
                variables.push((name.to_owned(), value.expose_secret().to_owned()));
            }
        };
        secret("MEMOJI__AMQP__URL", Some(&self.amqp.url));
        secret("MEMOJI__DATABASE__URL", Some(&self.database.url));
        secret("OPENAI_API_KEY", secrets.openai_api_key.as_ref());
        secret("ADMIN_TOKEN", secrets.admin_token.as_ref());
        let named = [
            (StorageSecrets::S3_ACCESS_KEY_ID, &storage.s3_access_key_id),
            (
                StorageSecrets::S3_SECRET_ACCESS_KEY,
                &storage.s3_secret_access_key,
            ),
            (StorageSecrets::S3_SESSION_TOKEN, &storage.s3_session_token),
            (
                StorageSecrets::SUPABASE_SERVICE_KEY,
                &storage.supabase_service_key,
            ),
        ];
        for (names, value) in named {
            secret(names[0], value.as_ref());
        }
        Ok(variables)
    }

    /// [`Settings::load`] as a process whose whole environment is `variables` would run it:
    /// `MEMOJI__` variables, the unprefixed aliases, `MEMOJI_CONFIG` and the secrets all come from
    /// `variables`, never from this process.
    pub fn load_from_variables(
        file: Option<&Path>,
        variables: &[(String, String)],
    ) -> Result<Settings, SettingsError> {
        let given = variables.iter().cloned().collect();
        Settings::load_from(file, &Variables::Given(given))
    }
}

/// Writes `value` under `name`: objects one level down each (`name__KEY`), leaves as text.
fn flatten(
    name: &str,
    value: &Value,
    out: &mut Vec<(String, String)>,
) -> Result<(), serde_json::Error> {
    let leaf = match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                flatten(&format!("{name}__{}", key.to_uppercase()), field, out)?;
            }
            return Ok(());
        }
        // An absent value: the layers below keep theirs.
        Value::Null => return Ok(()),
        Value::String(text) => text.clone(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        // No setting is a list: `environment()` reads no list separator.
        Value::Array(_) => {
            return Err(serde::ser::Error::custom(format!(
                "{name} is a list, which has no environment form"
            )));
        }
    };
    out.push((name.to_owned(), leaf));
    Ok(())
}

/// Where [`Settings::load`] reads variables from: the process, or a given list.
pub(super) enum Variables {
    Process,
    Given(BTreeMap<String, String>),
}

impl Variables {
    /// The variable as text, if set and valid Unicode (`std::env::var`).
    pub(super) fn var(&self, name: &str) -> Option<String> {
        match self {
            Variables::Process => std::env::var(name).ok(),
            Variables::Given(given) => given.get(name).cloned(),
        }
    }

    /// The variable as the OS gives it, if set (`std::env::var_os`).
    pub(super) fn var_os(&self, name: &str) -> Option<OsString> {
        match self {
            Variables::Process => std::env::var_os(name),
            Variables::Given(given) => given.get(name).map(OsString::from),
        }
    }

    /// The names of the variables set (those that are valid Unicode).
    pub(super) fn names(&self) -> Vec<String> {
        match self {
            Variables::Process => std::env::vars_os()
                .filter_map(|(name, _)| name.into_string().ok())
                .collect(),
            Variables::Given(given) => given.keys().cloned().collect(),
        }
    }

    /// The `MEMOJI__` layer over these variables.
    pub(super) fn source(&self, environment: config::Environment) -> config::Environment {
        match self {
            Variables::Process => environment,
            Variables::Given(given) => environment.source(Some(
                given.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::{Allowance, GeneratorKind, LogFormat, StorageKind};

    /// Everything a settings value holds, secrets included, as comparable text.
    fn everything(settings: &Settings) -> (Value, Vec<Option<String>>) {
        let secrets = &settings.secrets;
        let storage = &secrets.storage;
        let shown = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        (
            serde_json::to_value(settings).unwrap(),
            vec![
                Some(settings.amqp.url.expose_secret().to_owned()),
                Some(settings.database.url.expose_secret().to_owned()),
                shown(&secrets.openai_api_key),
                shown(&secrets.admin_token),
                shown(&storage.s3_access_key_id),
                shown(&storage.s3_secret_access_key),
                shown(&storage.s3_session_token),
                shown(&storage.supabase_service_key),
            ],
        )
    }

    #[test]
    fn settings_round_trip_through_the_environment() {
        // The defaults, then a change in every section, of every kind of value.
        let mut settings = Settings::defaults().unwrap();
        settings.amqp.url = SecretString::from("amqp://u:p%40ss@broker:5673/vhost");
        settings.amqp.prefix_names("t0123");
        settings.amqp.prefetch = 7;
        settings.amqp.reconnect_min_ms = 50;
        settings.database.url =
            SecretString::from("postgres://postgres@127.0.0.1:5432/memoji_it_x");
        settings.database.max_connections = 8;
        settings.database.synchronous_commit = "off".into();
        settings.openai.base_url = "http://127.0.0.1:4010/v1".into();
        settings.openai.backoff_min_ms = 10;
        settings.openai.default_quality = "high".into();
        settings.openai.total_timeout_secs = 91;
        settings
            .openai
            .successors
            .insert("dall_e_3".into(), "gpt-image-2".into());
        settings.generator.kind = GeneratorKind::Placeholder;
        settings.storage.kind = StorageKind::S3;
        settings.storage.local_dir = "/tmp/memoji images".into();
        settings.storage.public_base_url = "http://127.0.0.1:4011/images".into();
        settings.storage.s3.path_style = true;
        settings.storage.s3.endpoint = "http://127.0.0.1:9310".into();
        settings.http.bind = "127.0.0.1:4012".parse::<SocketAddr>().unwrap();
        settings.credits.enabled = false;
        settings
            .credits
            .allowances
            .insert("free".into(), Allowance::Limited(5));
        settings.stats.flush_ms = 50;
        settings.cleanup.schedule = "0 30 4 * * *".into();
        settings.cleanup.min_uses = 0;
        settings
            .prices
            .per_image
            .get_mut("gpt_image_2_6_flare")
            .unwrap()
            .insert("high".into(), 0.19);
        settings
            .prices
            .per_million_tokens
            .get_mut("gpt_image_2")
            .unwrap()
            .image_output = 32.5;
        settings.worker.shutdown_grace_secs = 5;
        settings.refunds.every_secs = 1;
        settings.log.format = LogFormat::Json;
        settings.log.level = "memoji_worker=debug,info".into();
        settings.secrets.openai_api_key = Some(SecretString::from("sk-test-key"));
        settings.secrets.admin_token = Some(SecretString::from("test-admin-token"));
        settings.secrets.storage.s3_access_key_id = Some(SecretString::from("AKIA-test"));
        settings.secrets.storage.supabase_service_key = Some(SecretString::from("sb-test"));

        let variables = settings.to_environment().unwrap();
        let names: Vec<&str> = variables.iter().map(|(name, _)| name.as_str()).collect();
        for name in [
            "MEMOJI__AMQP__JOB_QUEUE",
            "MEMOJI__HTTP__BIND",
            "MEMOJI__PRICES__PER_IMAGE__GPT_IMAGE_2_6_FLARE__HIGH",
            "MEMOJI__CREDITS__ALLOWANCES__LIFETIME",
            "OPENAI_API_KEY",
            "MEMOJI_S3_ACCESS_KEY_ID",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "each variable once");

        let loaded = Settings::load_from_variables(None, &variables).unwrap();
        assert_eq!(everything(&loaded), everything(&settings));
        // And the defaults alone come back as the defaults.
        let defaults = Settings::defaults().unwrap();
        let loaded =
            Settings::load_from_variables(None, &defaults.to_environment().unwrap()).unwrap();
        assert_eq!(everything(&loaded), everything(&defaults));
    }

    #[test]
    fn serializing_settings_never_shows_a_secret() {
        let mut settings = Settings::defaults().unwrap();
        settings.amqp.url = SecretString::from("amqp://u:hunter2@broker/%2f");
        settings.database.url = SecretString::from("postgres://u:hunter2@db/memoji");
        settings.secrets.openai_api_key = Some(SecretString::from("sk-hunter2"));
        let text = serde_json::to_string(&settings).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn the_given_variables_stand_for_the_process_environment() {
        let variables = vec![
            (
                "AMQP_URL".to_owned(),
                "amqp://alias@broker:5672/%2f".to_owned(),
            ),
            ("MEMOJI__AMQP__PREFETCH".to_owned(), "3".to_owned()),
            ("ADMIN_TOKEN".to_owned(), "".to_owned()),
        ];
        let loaded = Settings::load_from_variables(None, &variables).unwrap();
        assert_eq!(
            loaded.amqp.url.expose_secret(),
            "amqp://alias@broker:5672/%2f"
        );
        assert_eq!(loaded.amqp.prefetch, 3);
        assert!(
            loaded.secrets.admin_token.is_none(),
            "an empty secret is none"
        );
        let unknown = vec![("MEMOJI__AMQP__PREFECH".to_owned(), "3".to_owned())];
        let error = Settings::load_from_variables(None, &unknown).unwrap_err();
        assert!(
            error.to_string().contains("MEMOJI__AMQP__PREFECH"),
            "{error}"
        );
    }
}

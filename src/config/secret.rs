//! Secrets (the API token, the SMTP password), looked up the same way for both, in this
//! order: the environment, the config's inline value, the systemd credential, the file.
//! The environment comes first so that one config serves the service and a shell.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::source::Reader;

/// Where one secret may come from.
pub struct Lookup<'a> {
    /// The secret's key, for messages (`api.token`).
    pub key: &'a str,
    pub env: &'static str,
    pub inline: Option<String>,
    pub credential: &'static str,
    pub file: Option<PathBuf>,
    /// The key of the file, for messages (`api.token_file`).
    pub file_key: &'a str,
    pub file_value: Option<&'a figment::value::Value>,
}

/// What a lookup found.
pub enum Found {
    Secret(SecretString),
    /// A source was configured but could not be read (already reported).
    Broken,
    Nothing,
}

/// Reads a secret from a file: trimmed, not empty.
fn read_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if path.to_string_lossy().contains('/') {
            format!("cannot read {}: {e}", path.display())
        } else {
            // A bare word is more likely the secret pasted where its file's path goes:
            // never repeat it.
            format!(
                "cannot read the file it names ({e}); it takes the path of a file holding \
                 the secret, like /etc/vps-snapshot-agent/token (the value is not shown: \
                 it has no '/' and may be the secret itself)"
            )
        }
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(text.to_string()))
}

fn mode_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key}: {} is readable by group or others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )
    })
}

impl Lookup<'_> {
    pub fn find(self, r: &mut Reader<'_>) -> Found {
        if let Some(v) = std::env::var(self.env)
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            return Found::Secret(SecretString::from(v.trim().to_string()));
        }
        if let Some(v) = self.inline.filter(|v| !v.trim().is_empty()) {
            return Found::Secret(SecretString::from(v.trim().to_string()));
        }
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| Path::new(&d).join(self.credential))
            .filter(|p| p.exists());
        let from_file = credential.is_none();
        let Some(path) = credential.or(self.file) else {
            return Found::Nothing;
        };
        match read_file(&path) {
            Ok(s) => {
                if from_file {
                    r.warnings.extend(mode_warning(self.file_key, &path));
                }
                Found::Secret(s)
            }
            Err(e) if from_file => {
                r.error(self.file_key, self.file_value, e);
                Found::Broken
            }
            Err(e) => {
                let e = format!("systemd credential {}: {e}", self.credential);
                r.error(self.key, None, e);
                Found::Broken
            }
        }
    }
}

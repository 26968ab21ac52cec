//! `include = ["jobs.d/*.toml"]`: more `[[jobs]]` in files beside the main one (a conf.d
//! directory, one file per server or team), read in name order after the main file's
//! jobs. Every error still names the file it is in; an included file holds jobs only.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};

use super::{ConfigError, ConfigErrors};

/// The files the main file at `path` includes, in order; patterns are relative to its
/// directory and may use `*` and `?` in their last part.
pub(super) fn files(path: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let origin = path.display().to_string();
    let error = |message: String| ConfigErrors::single(origin.clone(), "include", message);
    let Ok(main) = Figment::from(Toml::file_exact(path)).extract::<Dict>() else {
        // The whole load reports what is wrong with the file itself.
        return Ok(Vec::new());
    };
    let Some(value) = main.get("include") else {
        return Ok(Vec::new());
    };
    let patterns: Vec<String> = match value {
        Value::Array(_, items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                error("expected a list of file patterns, like [\"jobs.d/*.toml\"]".into())
            })?,
        Value::String(_, s) => vec![s.clone()],
        _ => {
            return Err(error(
                "expected a list of file patterns, like [\"jobs.d/*.toml\"]".into(),
            ));
        }
    };
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The main file, matched by its own directory's glob, is not included again.
    let main = std::fs::canonicalize(path).ok();
    let mut out = Vec::new();
    for pattern in &patterns {
        for f in expand(base, pattern).map_err(error)? {
            if !out.contains(&f) && std::fs::canonicalize(&f).ok() != main {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// `pattern`'s files under `base`: itself when it has no wildcard (it must exist), else
/// the directory's files whose names match, in name order (none is fine: an empty
/// conf.d).
fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = base.join(pattern);
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = full.parent().unwrap_or(base).to_path_buf();
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!(
            "{pattern:?}: only the file name may have * or ? in it"
        ));
    }
    if !name.contains(['*', '?']) {
        return regular(&full).map(|()| vec![full]);
    }
    // A missing directory is more likely a typo than an empty conf.d: say so rather
    // than run with fewer jobs than the operator wrote.
    let entries = std::fs::read_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{pattern:?}: no directory {} (create it, even empty, or fix the path)",
            dir.display()
        ),
        _ => format!("{pattern:?}: cannot read {}: {e}", dir.display()),
    })?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| matches(&name, &n.to_string_lossy()))
        })
        // A directory named like a job file is passed over; anything else that matches
        // and cannot be read as a file (a dangling symlink, a pipe) is an error, not
        // fewer jobs in silence.
        .filter(|p| !p.is_dir())
        .collect();
    found.sort();
    for f in &found {
        regular(f)?;
    }
    Ok(found)
}

/// Whether `f` is a regular file (through symlinks), in words when it is not.
fn regular(f: &Path) -> Result<(), String> {
    match std::fs::metadata(f) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{}: not a regular file", f.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(f).is_ok() {
                Err(format!("{}: a symlink to nothing", f.display()))
            } else {
                Err(format!("{}: no such file", f.display()))
            }
        }
        Err(e) => Err(format!("{}: {e}", f.display())),
    }
}

/// Whether `name` matches `pattern` (`*`: any run of characters, `?`: one character), as
/// a shell matches: a hidden file (an editor's `.#web.toml`) only by a pattern that says so.
fn matches(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic wildcard matching, remembering the last `*` to backtrack to.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// `figment` with each of `files`' jobs added after those it has; a file with anything
/// but `[[jobs]]` (or that does not parse) is an error naming it.
pub(super) fn add(mut figment: Figment, files: &[PathBuf]) -> Result<Figment, ConfigErrors> {
    let mut errors = Vec::new();
    for f in files {
        let origin = f.display().to_string();
        match Figment::from(Toml::file_exact(f)).extract::<Dict>() {
            Err(e) => errors.extend(e.into_iter().map(|e| ConfigError {
                origin: origin.clone(),
                key: e.path.join("."),
                message: super::without_source(&e.kind.to_string()),
            })),
            Ok(tree) => {
                let tables = |items: &[Value]| items.iter().all(|v| v.as_dict().is_some());
                match tree.get("jobs") {
                    None => {}
                    Some(Value::Array(_, items)) if tables(items) => {}
                    Some(v) => errors.push(ConfigError {
                        origin: origin.clone(),
                        key: "jobs".into(),
                        message: format!(
                            "expected [[jobs]] tables, found {}; write each job under \
                             [[jobs]] (double brackets)",
                            super::source::noun_of(v)
                        ),
                    }),
                }
                for key in tree.keys().filter(|k| *k != "jobs") {
                    errors.push(ConfigError {
                        origin: origin.clone(),
                        key: key.clone(),
                        message: "an included file holds [[jobs]] only; put this in the main \
                                  configuration file"
                            .into(),
                    });
                }
                figment = figment.adjoin(Toml::file_exact(f));
            }
        }
    }
    if errors.is_empty() {
        Ok(figment)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards_match_as_a_shell_does() {
        assert!(matches("*.toml", "web.toml"));
        assert!(matches("web-??.toml", "web-01.toml"));
        assert!(!matches("*.toml", ".#web.toml"), "an editor's lock file");
        assert!(matches(".*.toml", ".web.toml"));
        assert!(!matches("*.toml", "web.toml.bak"));
        assert!(!matches("web-?.toml", "web-01.toml"));
        assert!(matches("a*b*c", "aXXbYYc"));
    }
}

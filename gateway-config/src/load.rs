//! Reading a routes file: bounded, parsed once, checked whole.

use crate::schema::Config;
use crate::{ConfigError, ConfigErrors, bounds};

impl Config {
    /// Parses and checks `source`. On failure, every problem found is
    /// returned, each with its key path and, where known, its line.
    pub fn parse(source: &str) -> Result<Config, ConfigErrors> {
        let file_error = |path: String, message: String, line: Option<usize>| {
            ConfigErrors(vec![ConfigError {
                path,
                message,
                line,
            }])
        };
        if source.len() as u64 > bounds::FILE_BYTES {
            return Err(file_error(
                String::new(),
                format!(
                    "the file is {} bytes; at most {} are read",
                    source.len(),
                    bounds::FILE_BYTES
                ),
                None,
            ));
        }
        // One read of the file: bounded (aliases, nesting), its keys' lines
        // indexed, its events kept for serde.
        let (lines, events) = crate::yaml_lines::KeyLines::read(source)
            .map_err(|r| file_error(r.path, r.message, Some(r.line)))?;
        let mut de = crate::yaml_de::Deserializer::new(&events);
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(&mut de);
        // Every unknown key, wherever it is, then what else is wrong: one
        // run reports every problem.
        let mut errors: Vec<ConfigError> = de
            .unknown_keys()
            .into_iter()
            .map(|unknown| ConfigError {
                path: unknown.path,
                message: unknown.message,
                line: Some(unknown.line),
            })
            .collect();
        let config = match parsed {
            Ok(config) => config,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let line = lines.line(&path).or_else(|| de.line());
                errors.push(ConfigError {
                    path,
                    message: e.into_inner().0,
                    line,
                });
                return Err(ConfigErrors(errors));
            }
        };
        drop(events);
        errors.extend(config.check(&lines));
        if errors.is_empty() {
            let mut config = config;
            config.lines = std::sync::Arc::new(lines);
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Reads and parses a file. Relative file paths in it (certificates,
    /// keys, CA files) are taken relative to the file's directory. A file
    /// over [`bounds::FILE_BYTES`] is refused without being read whole.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        Config::from_source(&Config::read(path)?, path)
    }

    /// The text of the file at `path`, read once and bounded.
    pub fn read(path: &std::path::Path) -> Result<String, ConfigErrors> {
        read_bounded(path).map_err(|message| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message,
                line: None,
            }])
        })
    }

    /// Parses `source`, read from `path`: relative file paths in it are
    /// taken relative to the file's directory.
    pub fn from_source(source: &str, path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let mut config = Config::parse(source)?;
        config.resolve_paths(path.parent().unwrap_or(std::path::Path::new(".")));
        Ok(config)
    }

    /// Makes relative file paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let resolve = |path: &mut String| {
            if std::path::Path::new(path.as_str()).is_relative() {
                *path = base.join(path.as_str()).display().to_string();
            }
        };
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            for cert in &mut tls.certificates {
                resolve(&mut cert.cert);
                resolve(&mut cert.key);
            }
        }
        for upstream in self.upstreams.values_mut() {
            if let Some(ca) = upstream.tls.as_mut().and_then(|t| t.ca.as_mut()) {
                resolve(ca);
            }
        }
    }
}

/// Reads a file of at most [`bounds::FILE_BYTES`], never more into memory.
fn read_bounded(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(bounds::FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > bounds::FILE_BYTES {
        return Err(format!(
            "{} is larger than {} bytes, the most a routes file may hold",
            path.display(),
            bounds::FILE_BYTES
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))
}

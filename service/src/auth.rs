//! Bearer tokens: the `--tokens FILE` format (`ORG TOKEN` per line, `#`
//! comments) and the lookup from a presented token to the org it belongs to.
//!
//! Tokens are kept only as SHA-256 digests and every lookup compares the
//! presented token's digest with every stored one in constant time, so
//! neither the comparison nor its position in the file leaks through timing.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What can be wrong with a tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `ORG TOKEN`.
    #[error("{path}:{line}: expected `ORG TOKEN` (two words), found {found} word(s)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// How many words the line had.
        found: usize,
    },
    /// The org name cannot name a policy file.
    #[error(
        "{path}:{line}: {org:?} is not a valid org name (letters, digits, `-`, `_`, `.`; not starting with `.`)"
    )]
    BadOrg {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The name found.
        org: String,
    },
    /// The same token is listed twice.
    #[error(
        "{path}:{line}: this token is already listed on line {first}; every token must be unique"
    )]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the repeat.
        line: usize,
        /// 1-based line number of the first occurrence.
        first: usize,
    },
    /// No token at all: the service would refuse every call.
    #[error("{path}: no tokens; add lines of the form `ORG TOKEN`")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// True for a name usable as an org (and so as a policy file name `ORG.yaml`).
pub fn valid_org(org: &str) -> bool {
    !org.is_empty()
        && org.len() <= 100
        && !org.starts_with('.')
        && org
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

struct Entry {
    org: String,
    digest: [u8; 32],
}

/// The tokens the service accepts, each bound to one org.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens, not even their digests.
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Read and validate a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        Tokens::parse(path, &text)
    }

    /// Parse the text of a tokens file; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let words: Vec<&str> = content.split_whitespace().collect();
            let [org, token] = words[..] else {
                return Err(TokensError::Malformed {
                    path: path.to_owned(),
                    line,
                    found: words.len(),
                });
            };
            if !valid_org(org) {
                return Err(TokensError::BadOrg {
                    path: path.to_owned(),
                    line,
                    org: org.to_owned(),
                });
            }
            let d = digest(token.as_bytes());
            if let Some(pos) = entries.iter().position(|e| e.digest == d) {
                return Err(TokensError::Duplicate {
                    path: path.to_owned(),
                    line,
                    first: lines_of[pos],
                });
            }
            entries.push(Entry {
                org: org.to_owned(),
                digest: d,
            });
            lines_of.push(line);
        }
        if entries.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Tokens { entries })
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no token is configured (never after a successful load).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The org a presented token belongs to, if any. Compares against every
    /// entry without an early exit.
    pub fn org_of(&self, presented: &str) -> Option<&str> {
        let d = digest(presented.as_bytes());
        let mut found: u32 = u32::MAX;
        for (i, e) in self.entries.iter().enumerate() {
            let hit = e.digest.ct_eq(&d);
            // Entries are few (one per org or runner pool): `u32` indexes suffice.
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&idx, hit);
        }
        let idx = usize::try_from(found).ok()?;
        self.entries.get(idx).map(|e| e.org.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tokens, TokensError> {
        Tokens::parse(Path::new("tokens"), text)
    }

    #[test]
    fn parses_pairs_and_comments() {
        let t =
            parse("# header\nacme s3cret-acme-token\n\nglobex  tok-globex # trailing\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.org_of("s3cret-acme-token"), Some("acme"));
        assert_eq!(t.org_of("tok-globex"), Some("globex"));
        assert_eq!(t.org_of("tok-globe"), None);
        assert_eq!(t.org_of(""), None);
    }

    #[test]
    fn refuses_bad_lines() {
        let e = parse("acme\n").err().unwrap().to_string();
        assert_eq!(
            e,
            "tokens:1: expected `ORG TOKEN` (two words), found 1 word(s)"
        );
        assert!(matches!(
            parse("acme a b\n"),
            Err(TokensError::Malformed { found: 3, .. })
        ));
        assert!(matches!(
            parse("../x tok\n"),
            Err(TokensError::BadOrg { .. })
        ));
        assert!(matches!(
            parse("a tok\nb tok\n"),
            Err(TokensError::Duplicate {
                line: 2,
                first: 1,
                ..
            })
        ));
        assert!(matches!(
            parse("# nothing\n"),
            Err(TokensError::Empty { .. })
        ));
    }

    #[test]
    fn org_names() {
        assert!(valid_org("acme"));
        assert!(valid_org("acme-corp_2.eu"));
        assert!(!valid_org(""));
        assert!(!valid_org(".hidden"));
        assert!(!valid_org("a/b"));
        assert!(!valid_org("a b"));
    }
}

//! Strict parsing of an endpoint's query string.
//!
//! A query is `name=value` pairs joined by `&`, each part percent-encoded (`+` is a space), as
//! browsers and `curl --data-urlencode` send them. Each route names the parameters it takes;
//! anything else is refused with a 400 that names the offending parameter, rather than ignored:
//! a misspelt `levle=debug` that silently did nothing would leave an operator believing the
//! level had changed. A parameter given twice, an empty pair (`a=1&&b=2`), a bad `%` escape or
//! bytes that are not UTF-8 are refused the same way.

use std::collections::BTreeMap;

/// Why a query string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter the route does not take.
    #[error("unknown parameter {name:?} (this endpoint takes {})", expected(.allowed))]
    Unknown {
        /// The parameter's name as given (decoded).
        name: String,
        /// The parameters the route takes.
        allowed: Vec<&'static str>,
    },
    /// The same parameter twice.
    #[error("parameter {0:?} given more than once")]
    Repeated(String),
    /// An empty pair, e.g. from `&&` or a trailing `&`.
    #[error("empty parameter in query {0:?} (expected name=value pairs joined by '&')")]
    Empty(String),
    /// A name or value whose percent-encoding is broken or does not decode to UTF-8.
    #[error("parameter {part:?} is not valid percent-encoded UTF-8 ({why})")]
    Encoding {
        /// The raw pair as sent.
        part: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn expected(allowed: &[&'static str]) -> String {
    if allowed.is_empty() {
        "no parameters".to_string()
    } else {
        allowed.join(", ")
    }
}

/// The parameters of one request, by name. A parameter sent without `=` (`?reset`) has an
/// empty value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    params: BTreeMap<&'static str, String>,
}

impl Query {
    /// Parses `raw` (the part after `?`, possibly empty), accepting only the names in
    /// `allowed`.
    pub fn parse(raw: &str, allowed: &[&'static str]) -> Result<Query, QueryError> {
        let mut params = BTreeMap::new();
        if raw.is_empty() {
            return Ok(Query { params });
        }
        for part in raw.split('&') {
            if part.is_empty() {
                return Err(QueryError::Empty(raw.to_string()));
            }
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name).map_err(|why| encoding(part, why))?;
            let value = decode(value).map_err(|why| encoding(part, why))?;
            let Some(known) = allowed.iter().find(|a| **a == name) else {
                return Err(QueryError::Unknown {
                    name,
                    allowed: allowed.to_vec(),
                });
            };
            if params.insert(*known, value).is_some() {
                return Err(QueryError::Repeated(name));
            }
        }
        Ok(Query { params })
    }

    /// The value of `name`, if it was sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Whether `name` was sent (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    /// Whether no parameter was sent.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

fn encoding(part: &str, why: &'static str) -> QueryError {
    QueryError::Encoding {
        part: part.to_string(),
        why,
    }
}

/// Decodes `+` and `%XX` escapes; a `%` not followed by two hex digits is an error.
fn decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("'%' must be followed by two hex digits")?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_parameters_decoded() {
        let q = Query::parse("level=access%3Ddebug%2Cinfo&reset", &["level", "reset"]).unwrap();
        assert_eq!(q.get("level"), Some("access=debug,info"));
        assert!(q.has("reset"));
        assert_eq!(q.get("reset"), Some(""));
        // An unescaped '=' inside a value is kept: only the first one splits.
        let q = Query::parse("level=hbone=debug", &["level"]).unwrap();
        assert_eq!(q.get("level"), Some("hbone=debug"));
        let q = Query::parse("level=a+b", &["level"]).unwrap();
        assert_eq!(q.get("level"), Some("a b"));
        assert!(Query::parse("", &[]).unwrap().is_empty());
    }

    #[test]
    fn unknown_parameter_is_named() {
        let err = Query::parse("levle=debug", &["level", "reset"]).unwrap_err();
        assert_eq!(
            err,
            QueryError::Unknown {
                name: "levle".into(),
                allowed: vec!["level", "reset"]
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown parameter \"levle\" (this endpoint takes level, reset)"
        );
        let err = Query::parse("x=1", &[]).unwrap_err();
        assert!(err.to_string().contains("takes no parameters"), "{err}");
    }

    #[test]
    fn malformed_queries_are_refused() {
        let allowed = &["level"];
        assert_eq!(
            Query::parse("level=debug&level=info", allowed),
            Err(QueryError::Repeated("level".into()))
        );
        assert!(matches!(
            Query::parse("level=debug&", allowed),
            Err(QueryError::Empty(_))
        ));
        assert!(matches!(
            Query::parse("&level=debug", allowed),
            Err(QueryError::Empty(_))
        ));
        for bad in ["level=%zz", "level=%4", "level=%", "level=%ff%fe"] {
            match Query::parse(bad, allowed) {
                Err(QueryError::Encoding { part, .. }) => assert_eq!(part, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // An escape in the name decodes before the name is checked.
        assert!(Query::parse("lev%65l=info", allowed).is_ok());
    }
}

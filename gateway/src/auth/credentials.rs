//! What a request offers to authenticate with: the `Authorization: Bearer`
//! header, or on a WebSocket upgrade the `bearer` subprotocol pair. Shapes
//! only; nothing here is verified.

use crate::refusal::Refusal;
use base64::Engine;
use http::HeaderMap;
use serde::Deserialize;

/// Tokens longer than this are refused without being looked at further.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    Missing,
    Malformed,
}

fn is_base64url(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Extracts the token from `Authorization` values: exactly one header,
/// scheme `Bearer` in any case, then one token of three base64url parts.
pub fn bearer<'a>(values: &[&'a [u8]]) -> Result<&'a str, BearerError> {
    let value = match values {
        [] => return Err(BearerError::Missing),
        [one] => *one,
        _ => return Err(BearerError::Malformed),
    };
    if value.len() > MAX_TOKEN_BYTES + 16 {
        return Err(BearerError::Malformed);
    }
    let value = std::str::from_utf8(value).map_err(|_| BearerError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Malformed);
    }
    let token = token.trim_start_matches(' ').trim_end_matches([' ', '\t']);
    if !is_token_shaped(token) {
        return Err(BearerError::Malformed);
    }
    Ok(token)
}

/// A JWT's shape, wherever a token comes from: at most `MAX_TOKEN_BYTES`,
/// three non-empty base64url parts and nothing else.
fn is_token_shaped(token: &str) -> bool {
    let mut parts = token.split('.');
    token.len() <= MAX_TOKEN_BYTES
        && parts.by_ref().take(3).filter(|p| is_base64url(p)).count() == 3
        && parts.next().is_none()
}

/// The subprotocol name under which browsers send a token on a WebSocket
/// upgrade (`Sec-WebSocket-Protocol: bearer, <token>`): they cannot set
/// `Authorization` there, and a token in the URL would end up in logs.
pub const BEARER_SUBPROTOCOL: &str = "bearer";

/// A token offered as a WebSocket subprotocol.
#[derive(Debug, PartialEq, Eq)]
pub struct SubprotocolBearer<'a> {
    /// `None` when no `bearer` subprotocol was offered.
    pub token: Option<&'a str>,
    /// The other subprotocols offered, in order, to forward upstream
    /// (empty: send none).
    pub others: String,
}

/// Reads `Sec-WebSocket-Protocol` values (one list, however many lines):
/// `bearer` followed by the token, among any other subprotocols. `bearer`
/// twice, or without a well-formed token after it, is malformed.
pub fn subprotocol_bearer<'a>(values: &[&'a [u8]]) -> Result<SubprotocolBearer<'a>, BearerError> {
    let mut items = Vec::new();
    for value in values {
        let value = std::str::from_utf8(value).map_err(|_| BearerError::Malformed)?;
        items.extend(value.split(',').map(|p| p.trim_matches([' ', '\t'])));
    }
    let mut token = None;
    let mut others: Vec<&str> = Vec::new();
    let mut items = items.into_iter().filter(|p| !p.is_empty());
    while let Some(item) = items.next() {
        if item == BEARER_SUBPROTOCOL {
            if token.is_some() {
                return Err(BearerError::Malformed);
            }
            let candidate = items.next().ok_or(BearerError::Malformed)?;
            if !is_token_shaped(candidate) {
                return Err(BearerError::Malformed);
            }
            token = Some(candidate);
        } else {
            others.push(item);
        }
    }
    Ok(SubprotocolBearer {
        token,
        others: others.join(", "),
    })
}

/// The `exp` claim of a JWT, read without checking the signature.
pub fn peek_exp(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok().map(|c| c.exp)
}

/// The subprotocols a WebSocket upgrade offered, once a `bearer` token is
/// taken out of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subprotocols {
    /// The others, in order, to forward upstream (empty: send none).
    pub others: String,
    /// Whether `bearer` was offered: then the 101 must name it, as browsers
    /// require, although the upstream never saw it.
    pub bearer: bool,
}

/// What a request offers to authenticate with. The subprotocols are read
/// at once (they are edited on every route); `Authorization` only when a
/// protected route asks for the token.
#[derive(Debug)]
pub struct Credentials<'a> {
    headers: &'a HeaderMap,
    subprotocol_token: Option<&'a str>,
    /// On a WebSocket upgrade that offered subprotocols.
    pub subprotocols: Option<Subprotocols>,
}

impl<'a> Credentials<'a> {
    /// Reads the credentials of a request. A token offered as a WebSocket
    /// subprotocol is taken out of what is forwarded on every route, and
    /// counts (on protected routes) when there is no `Authorization`; a
    /// malformed `bearer` subprotocol is refused on every route.
    pub fn read(headers: &'a HeaderMap, websocket: bool) -> Result<Self, Refusal> {
        let mut credentials = Credentials {
            headers,
            subprotocol_token: None,
            subprotocols: None,
        };
        if websocket {
            let offered: Vec<&[u8]> = headers
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            if !offered.is_empty() {
                let parsed =
                    subprotocol_bearer(&offered).map_err(|_| Refusal::MalformedSubprotocol)?;
                credentials.subprotocol_token = parsed.token;
                credentials.subprotocols = Some(Subprotocols {
                    others: parsed.others,
                    bearer: parsed.token.is_some(),
                });
            }
        }
        Ok(credentials)
    }

    /// The token (from `Authorization`, else the `bearer` subprotocol), or
    /// the refusal a protected route answers without one.
    pub fn token(&self) -> Result<&'a str, Refusal> {
        let mut values = self.headers.get_all(http::header::AUTHORIZATION).iter();
        let found = match (values.next(), values.next()) {
            (None, _) => bearer(&[]),
            (Some(one), None) => bearer(&[one.as_bytes()]),
            (Some(_), Some(_)) => Err(BearerError::Malformed),
        };
        match (found, self.subprotocol_token) {
            (Err(BearerError::Missing), Some(token)) => Ok(token),
            (Ok(token), _) => Ok(token),
            (Err(BearerError::Missing), None) => Err(Refusal::Unauthenticated),
            (Err(BearerError::Malformed), _) => Err(Refusal::MalformedBearer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn subprotocol_bearer_shapes() {
        let token = "aGVhZGVy.cGF5bG9hZA.c2ln";
        let parse = |lines: &[&str]| {
            let values: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            subprotocol_bearer(&values).map(|p| (p.token.map(str::to_owned), p.others))
        };
        type Parsed = Result<(Option<String>, String), BearerError>;
        let cases: Vec<(Vec<String>, Parsed)> = vec![
            (vec![], Ok((None, String::new()))),
            (vec!["chat".into()], Ok((None, "chat".into()))),
            (
                vec![format!("bearer, {token}")],
                Ok((Some(token.into()), String::new())),
            ),
            (
                vec![format!("chat, bearer,{token} , v2")],
                Ok((Some(token.into()), "chat, v2".into())),
            ),
            (
                vec!["bearer".into(), token.into()],
                Ok((Some(token.into()), String::new())),
            ),
            (vec!["bearer".into()], Err(BearerError::Malformed)),
            (vec!["bearer, chat".into()], Err(BearerError::Malformed)),
            (
                vec![format!("bearer, {token}.x")],
                Err(BearerError::Malformed),
            ),
            (
                vec![format!("bearer, {token}, bearer, {token}")],
                Err(BearerError::Malformed),
            ),
            // Subprotocol names are case-sensitive: this is some other one.
            (
                vec![format!("Bearer, {token}")],
                Ok((None, format!("Bearer, {token}"))),
            ),
        ];
        for (lines, expected) in cases {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            assert_eq!(parse(&lines), expected, "{lines:?}");
        }
        assert_eq!(
            subprotocol_bearer(&[b"bearer, \xff"]).err(),
            Some(BearerError::Malformed)
        );
    }

    #[test]
    fn bearer_shapes() {
        let good = format!("{}.{}.sig", b64("{}"), b64("{}"));
        let with = |v: &str| v.as_bytes().to_vec();
        type Case = (Vec<Vec<u8>>, Result<(), BearerError>);
        let cases: Vec<Case> = vec![
            (vec![], Err(BearerError::Missing)),
            (vec![with(&format!("Bearer {good}"))], Ok(())),
            (vec![with(&format!("bearer {good}"))], Ok(())),
            (vec![with(&format!("BEARER  {good}"))], Ok(())),
            (
                vec![with(&format!("Basic {good}"))],
                Err(BearerError::Malformed),
            ),
            (
                vec![with(&format!("Bearer{good}"))],
                Err(BearerError::Malformed),
            ),
            (vec![with("Bearer ")], Err(BearerError::Malformed)),
            (
                vec![with(&format!("Bearer {good} extra"))],
                Err(BearerError::Malformed),
            ),
            (vec![with("Bearer a.b")], Err(BearerError::Malformed)),
            (vec![with("Bearer a.b.c.d")], Err(BearerError::Malformed)),
            (vec![with("Bearer a..c")], Err(BearerError::Malformed)),
            (vec![with("Bearer a.b.")], Err(BearerError::Malformed)),
            (vec![with("Bearer a+b.c.d")], Err(BearerError::Malformed)),
            (vec![with("Bearer a=.b.c")], Err(BearerError::Malformed)),
            (
                vec![with(&format!("Bearer {}.b.c", "a".repeat(MAX_TOKEN_BYTES)))],
                Err(BearerError::Malformed),
            ),
            (
                vec![
                    with(&format!("Bearer {good}")),
                    with(&format!("Bearer {good}")),
                ],
                Err(BearerError::Malformed),
            ),
            (vec![vec![0xff, 0xfe]], Err(BearerError::Malformed)),
        ];
        for (values, expected) in cases {
            let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            assert_eq!(bearer(&slices).map(drop), expected, "{values:?}");
        }
    }

    #[test]
    fn exp_is_read_without_verification() {
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256"}"#),
            b64(r#"{"exp":1700000000,"sub":"1"}"#)
        );
        assert_eq!(peek_exp(&token), Some(1_700_000_000));
        assert_eq!(
            peek_exp(&format!("{}.{}.sig", b64("{}"), b64(r#"{"sub":"1"}"#))),
            None
        );
        assert_eq!(peek_exp("a.!!!.c"), None);
    }
}

/// Property tests: the parsers answer every input without a panic, accept
/// exactly the token shape, and find a token wherever it is offered.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,40}\\.[A-Za-z0-9_-]{1,40}\\.[A-Za-z0-9_-]{1,40}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn any_header_is_answered_and_only_token_shapes_pass(
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..3),
        ) {
            let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            if let Ok(token) = bearer(&values) {
                prop_assert!(is_token_shaped(token));
            }
            if let Ok(parsed) = subprotocol_bearer(&values) {
                prop_assert!(parsed.token.is_none_or(is_token_shaped));
                prop_assert!(!parsed.others.split(", ").any(|p| p == BEARER_SUBPROTOCOL));
            }
        }

        #[test]
        fn a_bearer_token_is_found_in_any_scheme_case(
            token in token(),
            scheme in "[bB][eE][aA][rR][eE][rR]",
            spaces in " {1,3}",
        ) {
            let header = format!("{scheme}{spaces}{token}");
            prop_assert_eq!(bearer(&[header.as_bytes()]), Ok(token.as_str()));
            // Two Authorization headers are never guessed between.
            prop_assert_eq!(
                bearer(&[header.as_bytes(), header.as_bytes()]),
                Err(BearerError::Malformed)
            );
        }

        #[test]
        fn a_subprotocol_token_is_taken_out_and_the_rest_kept(
            token in token(),
            before in prop::collection::vec("[a-z][a-z0-9.]{0,8}", 0..3),
            after in prop::collection::vec("[a-z][a-z0-9.]{0,8}", 0..3),
        ) {
            prop_assume!(!before.iter().chain(&after).any(|p| p == BEARER_SUBPROTOCOL));
            let mut offered: Vec<String> = before.clone();
            offered.push(BEARER_SUBPROTOCOL.into());
            offered.push(token.clone());
            offered.extend(after.iter().cloned());
            let line = offered.join(", ");
            let parsed = subprotocol_bearer(&[line.as_bytes()]).expect("well formed");
            prop_assert_eq!(parsed.token, Some(token.as_str()));
            let others: Vec<String> = before.into_iter().chain(after).collect();
            prop_assert_eq!(parsed.others, others.join(", "));
        }
    }
}

//! The identity the gateway hands to the services behind it.
//!
//! The gateway removes every client-sent copy of these headers, in any
//! spelling, and sets exactly one of each on a protected route; a service
//! trusts them and nothing else.

/// The verified user's id.
pub const USER_ID: &str = "x-user-id";
/// The verified user's role.
pub const USER_ROLE: &str = "x-user-role";
/// On an upgraded connection: the token's `exp`, in seconds since the epoch,
/// so that the service can close the socket when it ends.
pub const AUTH_EXPIRES: &str = "x-auth-expires";
/// The request id, kept from the client when well formed, else made anew.
pub const REQUEST_ID: &str = "x-request-id";

/// Parses a user id: a positive decimal integer without sign, spaces or
/// leading zeros, so that one user has exactly one spelling.
pub fn parse_user_id(raw: &str) -> Option<i64> {
    let well_formed = !raw.is_empty()
        && raw.len() <= 19
        && raw.bytes().all(|b| b.is_ascii_digit())
        && !raw.starts_with('0');
    if !well_formed {
        return None;
    }
    raw.parse().ok().filter(|id: &i64| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn user_id_spellings() {
        let cases = [
            ("1", Some(1)),
            ("42", Some(42)),
            ("9223372036854775807", Some(i64::MAX)),
            ("9223372036854775808", None),
            ("0", None),
            ("007", None),
            ("-1", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1,2", None),
            ("abc", None),
            ("", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse_user_id(raw), expected, "{raw:?}");
        }
    }

    proptest! {
        /// One spelling per user: whatever is accepted prints back as itself.
        #[test]
        fn accepted_ids_are_canonical(raw in "\\PC{0,24}") {
            if let Some(id) = parse_user_id(&raw) {
                prop_assert_eq!(id.to_string(), raw);
            }
        }

        #[test]
        fn every_positive_id_round_trips(id in 1i64..) {
            prop_assert_eq!(parse_user_id(&id.to_string()), Some(id));
        }
    }
}

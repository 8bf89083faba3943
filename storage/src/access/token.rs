//! The text of a token and of an `authorization` value. Pure functions over untrusted
//! bytes (a fuzz target calls them); no hashing here.
//!
//! A token is `tidelog_` + the id (16 lowercase hex digits, 8 bytes) + `_` + the secret
//! (64 lowercase hex digits, 32 random bytes): 89 ASCII characters. The id is public (it
//! names the token in `tidelog auth token list` and `revoke`); the secret is shown once,
//! at creation, and only its SHA-256 is stored.
//!
//! An `authorization` value is `Bearer <token>` (the scheme case-insensitive, one or
//! more spaces, RFC 6750), at most [`AUTHORIZATION_BYTES_MAX`] bytes.

use std::fmt;

/// The fixed start of every token.
pub const TOKEN_PREFIX: &str = "tidelog_";
/// Hex digits of the id.
pub const TOKEN_ID_HEX_CHARS: usize = 16;
/// Random bytes of the secret.
pub const TOKEN_SECRET_BYTES: usize = 32;
/// Characters of a token's text.
pub const TOKEN_TEXT_CHARS: usize =
    TOKEN_PREFIX.len() + TOKEN_ID_HEX_CHARS + 1 + 2 * TOKEN_SECRET_BYTES;
/// The longest `authorization` value looked at; longer ones are refused unread.
pub const AUTHORIZATION_BYTES_MAX: usize = 256;

const _: () = assert!(TOKEN_TEXT_CHARS == 89);
const _: () = assert!(TOKEN_TEXT_CHARS + "Bearer ".len() < AUTHORIZATION_BYTES_MAX);

/// A token's parts. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenText {
    pub id: u64,
    pub secret: [u8; TOKEN_SECRET_BYTES],
}

impl fmt::Debug for TokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenText {{ id: {}, secret: <hidden> }}",
            format_id(self.id)
        )
    }
}

impl TokenText {
    /// The text handed to the operator (once).
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(TOKEN_TEXT_CHARS);
        text.push_str(TOKEN_PREFIX);
        text.push_str(&format_id(self.id));
        text.push('_');
        for byte in self.secret {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }
}

/// The id as the CLI shows it: 16 lowercase hex digits.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Reads an id as [`format_id`] writes it.
pub fn parse_id(text: &str) -> Result<u64, TokenError> {
    if text.len() != TOKEN_ID_HEX_CHARS || !text.bytes().all(is_lower_hex) {
        return Err(TokenError::Malformed(
            "a token id is 16 lowercase hex digits",
        ));
    }
    u64::from_str_radix(text, 16)
        .map_err(|_| TokenError::Malformed("a token id is 16 lowercase hex digits"))
}

/// Why a credential was refused. The messages never echo the bytes (they may be a
/// secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The `authorization` value does not use the Bearer scheme.
    NotBearer,
    /// Longer than [`AUTHORIZATION_BYTES_MAX`].
    TooLong,
    /// Not a tidelog token; says which part is wrong.
    Malformed(&'static str),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NotBearer => {
                f.write_str("the authorization metadata must be \"Bearer <token>\"")
            }
            TokenError::TooLong => write!(
                f,
                "the authorization metadata is longer than {AUTHORIZATION_BYTES_MAX} bytes"
            ),
            TokenError::Malformed(what) => write!(f, "malformed token: {what}"),
        }
    }
}

impl std::error::Error for TokenError {}

fn is_lower_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// Parses a token's text (surrounding ASCII whitespace ignored, as in a token file).
pub fn parse_token(text: &[u8]) -> Result<TokenText, TokenError> {
    let text = text.trim_ascii();
    let Some(rest) = text.strip_prefix(TOKEN_PREFIX.as_bytes()) else {
        return Err(TokenError::Malformed(
            "a tidelog token starts with \"tidelog_\"",
        ));
    };
    if rest.len() != TOKEN_TEXT_CHARS - TOKEN_PREFIX.len() {
        return Err(TokenError::Malformed("a tidelog token is 89 characters"));
    }
    let (id_hex, rest) = rest.split_at(TOKEN_ID_HEX_CHARS);
    let Some((b'_', secret_hex)) = rest.split_first() else {
        return Err(TokenError::Malformed("the id is followed by \"_\""));
    };
    let mut id = 0u64;
    for &byte in id_hex {
        let digit = hex_value(byte).ok_or(TokenError::Malformed("the id is lowercase hex"))?;
        id = (id << 4) | u64::from(digit);
    }
    let mut secret = [0u8; TOKEN_SECRET_BYTES];
    for (byte, pair) in secret.iter_mut().zip(secret_hex.chunks_exact(2)) {
        let (Some(high), Some(low)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(TokenError::Malformed("the secret is lowercase hex"));
        };
        *byte = (high << 4) | low;
    }
    Ok(TokenText { id, secret })
}

/// Parses an `authorization` metadata value: `Bearer <token>`.
pub fn parse_authorization(value: &[u8]) -> Result<TokenText, TokenError> {
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return Err(TokenError::TooLong);
    }
    const SCHEME: &[u8] = b"bearer";
    let Some((scheme, rest)) = value.split_at_checked(SCHEME.len()) else {
        return Err(TokenError::NotBearer);
    };
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return Err(TokenError::NotBearer);
    }
    parse_token(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> TokenText {
        let mut secret = [0u8; 32];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = (i * 37) as u8;
        }
        TokenText {
            id: 0x0123_4567_89ab_cdef,
            secret,
        }
    }

    #[test]
    fn text_round_trips_and_bearer_values_parse() {
        let token = sample();
        let text = token.to_text();
        assert_eq!(text.len(), TOKEN_TEXT_CHARS);
        assert!(
            text.starts_with("tidelog_0123456789abcdef_00254a"),
            "{text}"
        );
        assert_eq!(parse_token(text.as_bytes()).unwrap(), token);
        assert_eq!(parse_token(format!(" {text}\n").as_bytes()).unwrap(), token);
        for value in [
            format!("Bearer {text}"),
            format!("bearer  {text}"),
            format!("BEARER {text}"),
        ] {
            assert_eq!(
                parse_authorization(value.as_bytes()).unwrap(),
                token,
                "{value}"
            );
        }
        assert!(
            !format!("{token:?}").contains("00254a"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn malformed_values_are_refused_with_their_reason() {
        let text = sample().to_text();
        assert_eq!(
            parse_authorization(text.as_bytes()),
            Err(TokenError::NotBearer)
        );
        assert_eq!(
            parse_authorization(format!("Basic {text}").as_bytes()),
            Err(TokenError::NotBearer)
        );
        assert_eq!(
            parse_authorization(format!("Bearer{text}").as_bytes()),
            Err(TokenError::NotBearer)
        );
        assert_eq!(parse_authorization(b"Bearer"), Err(TokenError::NotBearer));
        assert_eq!(parse_authorization(&[b'a'; 257]), Err(TokenError::TooLong));
        let upper = text.to_uppercase().replacen("TIDELOG_", "tidelog_", 1);
        assert!(matches!(
            parse_token(upper.as_bytes()),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            parse_token(&text.as_bytes()[..88]),
            Err(TokenError::Malformed(_))
        ));
        let mut no_sep = text.clone().into_bytes();
        no_sep[24] = b'x';
        assert!(matches!(
            parse_token(&no_sep),
            Err(TokenError::Malformed(_))
        ));
        let mut bad_hex = text.into_bytes();
        bad_hex[60] = b'g';
        assert!(matches!(
            parse_token(&bad_hex),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(parse_id("0123456789abcdef"), Ok(0x0123_4567_89ab_cdef));
        assert!(parse_id("0123456789ABCDEF").is_err());
        assert!(parse_id("+123456789abcdef").is_err());
    }

    proptest! {
        #[test]
        fn any_token_round_trips(id: u64, secret: [u8; 32]) {
            let token = TokenText { id, secret };
            prop_assert_eq!(parse_token(token.to_text().as_bytes()), Ok(token.clone()));
            prop_assert_eq!(parse_id(&format_id(id)), Ok(id));
        }

        #[test]
        fn any_bytes_parse_without_panicking(bytes: Vec<u8>) {
            let _ = parse_authorization(&bytes);
            let _ = parse_token(&bytes);
        }
    }
}

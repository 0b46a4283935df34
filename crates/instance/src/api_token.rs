//! The bearer token the mutating endpoints require: read from the 0600 file
//! `secrets_dir/api-token` at every request (so a rotated token applies at once) and compared in
//! constant time.

use std::path::Path;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stator_api::names::secret_keys;
use stator_engine::credentials::read_secret;

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A token that does not match.
    Wrong,
    /// The token file cannot be used; nothing is accepted.
    Unavailable(String),
}

/// Checks an `Authorization` header value against the token file in `secrets_dir`.
pub fn authorize(secrets_dir: &Path, header: Option<&str>) -> Result<(), Refusal> {
    let given = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Missing)?;
    let expected = read_secret(secrets_dir, secret_keys::API_TOKEN)
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    if tokens_equal(given.as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// The answer refusing a request whose `Authorization` header does not carry the token in
/// `secrets_dir`, or `None` when it does: the one check of every endpoint that takes orders
/// (the instance manager's, the local supervisor's).
pub fn refusal(secrets_dir: &Path, headers: &HeaderMap) -> Option<Response> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let refused = |message: &str| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": message })),
        )
            .into_response()
    };
    authorize(secrets_dir, header).err().map(|refusal| match refusal {
        Refusal::Missing => refused("this endpoint needs Authorization: Bearer <api-token>"),
        Refusal::Wrong => refused("wrong token"),
        Refusal::Unavailable(why) => {
            tracing::error!(error = %why, "the API token cannot be read; refusing mutating requests");
            refused("the API token is not available")
        }
    })
}

/// Compares two tokens in time that depends only on their lengths, not on where they differ.
pub fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir_with_token(token: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(secret_keys::API_TOKEN);
        std::fs::write(&p, token).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        dir
    }

    #[test]
    fn the_right_bearer_token_is_accepted() {
        let dir = dir_with_token("abc123\n");
        assert_eq!(authorize(dir.path(), Some("Bearer abc123")), Ok(()));
    }

    #[test]
    fn a_missing_or_wrong_token_is_refused() {
        let dir = dir_with_token("abc123");
        assert_eq!(authorize(dir.path(), None), Err(Refusal::Missing));
        assert_eq!(
            authorize(dir.path(), Some("Basic abc123")),
            Err(Refusal::Missing)
        );
        assert_eq!(
            authorize(dir.path(), Some("Bearer abc12")),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            authorize(dir.path(), Some("Bearer abc1234")),
            Err(Refusal::Wrong)
        );
    }

    #[test]
    fn without_a_token_file_nothing_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            authorize(dir.path(), Some("Bearer x")),
            Err(Refusal::Unavailable(_))
        ));
    }

    #[test]
    fn tokens_equal_only_when_identical() {
        assert!(tokens_equal(b"same", b"same"));
        assert!(!tokens_equal(b"same", b"samf"));
        assert!(!tokens_equal(b"", b"x"));
        assert!(tokens_equal(b"", b""));
    }
}

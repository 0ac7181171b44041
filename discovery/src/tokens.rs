//! Admin API tokens as the store keeps them: an id, the SHA-256 of the secret (never the
//! secret itself), who it is for (teams, or the admin), and when it expires. Kept in the
//! store so every strait of a ZooKeeper ensemble accepts the same tokens; revoking one is
//! deleting its record.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::{ModelError, validate_dns_label};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Public part of the token (`strait_<id>_<secret>`): 16 lowercase hex digits.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// The teams it acts for (empty for an admin token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// Everything, teams included.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who created it (an identity's label).
    pub created_by: String,
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<SystemTime>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Token ids: 16 lowercase hex digits (safe as file and znode names).
pub fn validate_token_id(id: &str) -> Result<(), ModelError> {
    if is_hex(id, 16) {
        Ok(())
    } else {
        Err(ModelError::new(
            "token id",
            format!("`{id}` is not a token id (16 hex digits)"),
        ))
    }
}

impl TokenRecord {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_token_id(&self.id)?;
        if !is_hex(&self.hash, 64) {
            return Err(ModelError::new("hash", "must be 64 hex digits (SHA-256)"));
        }
        if self.admin != self.teams.is_empty() {
            return Err(ModelError::new(
                "teams",
                "a token is either for teams or the admin's",
            ));
        }
        for team in &self.teams {
            validate_dns_label("teams", team)?;
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 256) {
            return Err(ModelError::new("description", "at most 256 bytes"));
        }
        Ok(())
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

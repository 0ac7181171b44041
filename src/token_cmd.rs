//! `strait token` (the admin's: make, list, revoke admin API tokens) and `strait audit`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::AdminArgs;
use crate::cli::{AdminClient, Method};

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token for teams (or the admin); the secret is printed once.
    Create {
        /// A team the token acts for; repeatable.
        #[arg(long = "team", required_unless_present = "admin_token")]
        teams: Vec<String>,
        /// An admin token (everything, teams included).
        #[arg(long, conflicts_with = "teams")]
        admin_token: bool,
        /// Expires after this, 1s to 3y (e.g. 30d, 12h, 90s); default never.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens (ids, teams, expiry; never secrets).
    Ls,
    /// Revoke a token by id.
    Revoke { id: String },
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn token(admin: &AdminArgs, command: TokenCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(admin);
    match command {
        TokenCommand::Create {
            teams,
            admin_token: is_admin,
            ttl,
            description,
        } => {
            let mut body = json!({"teams": teams, "admin": is_admin});
            if let Some(ttl) = ttl {
                body["ttl"] = json!(humantime::format_duration(ttl).to_string());
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let created = client.ok(Method::Post(body), "/v1/tokens")?;
            if admin.json {
                return print_json(&created);
            }
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} for {}{}: shown once, strait keeps only its hash",
                created["id"].as_str().unwrap_or_default(),
                if is_admin {
                    "the admin".to_string()
                } else {
                    format!("team(s) {}", teams.join(", "))
                },
                created["expires"]
                    .as_str()
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        TokenCommand::Ls => {
            let body = client.ok(Method::Get, "/v1/tokens")?;
            if admin.json {
                return print_json(&body);
            }
            println!(
                "{:<17} {:<24} {:<21} {:<21} DESCRIPTION",
                "ID", "FOR", "CREATED", "EXPIRES"
            );
            for t in body["tokens"].as_array().into_iter().flatten() {
                let whom = if t["admin"] == true {
                    "admin".to_string()
                } else {
                    t["teams"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{:<17} {:<24} {:<21} {:<21} {}",
                    t["id"].as_str().unwrap_or_default(),
                    whom,
                    t["created"].as_str().unwrap_or_default(),
                    t["expires"].as_str().unwrap_or("never"),
                    t["description"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            client.ok(Method::Delete, &format!("/v1/tokens/{id}"))?;
            println!("token {id} revoked");
            Ok(())
        }
    }
}

/// `strait audit [--since T]`: the audit log, oldest first.
pub fn audit(admin: &AdminArgs, since: Option<String>) -> anyhow::Result<()> {
    let client = AdminClient::new(admin);
    let path = match &since {
        Some(since) => format!("/v1/audit?since={}", urlencode(since)),
        None => "/v1/audit".to_string(),
    };
    let body = client.ok(Method::Get, &path)?;
    if admin.json {
        return print_json(&body);
    }
    for r in body["records"].as_array().into_iter().flatten() {
        println!(
            "{:>6} {} {:<24} {:<7} {:<40} {} {}{}",
            r["seq"].as_u64().unwrap_or_default(),
            r["time"]
                .as_str()
                .unwrap_or_default()
                .get(..19)
                .unwrap_or_default(),
            r["who"].as_str().unwrap_or_default(),
            r["method"].as_str().unwrap_or_default(),
            r["object"].as_str().unwrap_or_default(),
            r["status"].as_u64().unwrap_or_default(),
            r["result"].as_str().unwrap_or_default(),
            r["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// What a query value keeps as it is: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::urlencode;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode("42"), "42");
        assert_eq!(
            urlencode("2026-12-03T14:02:11+01:00"),
            "2026-12-03T14%3A02%3A11%2B01%3A00"
        );
        assert_eq!(urlencode("a b/é~_.-"), "a%20b%2F%C3%A9~_.-");
    }
}

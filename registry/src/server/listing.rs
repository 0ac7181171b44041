//! The catalog and each repository's tags, in pages.

use axum::http::{StatusCode, header};

use crate::error::{ApiError, ErrorCode};
use crate::names::{self, RepoName};
use crate::server::parts::{self, ApiResult, Params, header_value, json_response, name_unknown};
use crate::server::state::Registry;

/// The most entries one page of tags or catalog holds, whatever `n` asks.
const MAX_PAGE: usize = 10_000;

impl Registry {
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool, ApiError> {
        let entries = self.storage.meta_list(repo.as_str()).await?;
        Ok(entries.iter().any(|e| e == "_manifests" || e == "_layers"))
    }

    pub(super) async fn catalog(&self, params: Params, head: bool) -> ApiResult {
        let repositories = self.storage.repositories().await?;
        let (page, next) = paginate(repositories, &params)?;
        let mut response = json_response(
            StatusCode::OK,
            serde_json::json!({ "repositories": page }).to_string(),
            head,
        );
        if let Some((n, last)) = next {
            response.headers_mut().insert(
                header::LINK,
                header_value(format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\"")),
            );
        }
        Ok(response)
    }

    pub(super) async fn tags(&self, repo: &RepoName, params: Params, head: bool) -> ApiResult {
        if !self.repository_exists(repo).await? {
            return Err(name_unknown(repo));
        }
        let tags = self
            .storage
            .meta_list(&format!("{repo}/_tags"))
            .await?
            .into_iter()
            .filter(|t| names::is_tag(t))
            .collect();
        let (page, next) = paginate(tags, &params)?;
        let mut response = json_response(
            StatusCode::OK,
            serde_json::json!({ "name": repo.as_str(), "tags": page }).to_string(),
            head,
        );
        if let Some((n, last)) = next {
            response.headers_mut().insert(
                header::LINK,
                header_value(format!(
                    "</v2/{repo}/tags/list?n={n}&last={last}>; rel=\"next\""
                )),
            );
        }
        Ok(response)
    }
}

/// One page of a sorted listing, and the `n` and `last` of the next page if any.
type Page = (Vec<String>, Option<(usize, String)>);

fn paginate(mut entries: Vec<String>, params: &Params) -> Result<Page, ApiError> {
    entries.sort();
    if let Some(last) = &params.last {
        entries.retain(|e| e.as_str() > last.as_str());
    }
    let n = match &params.n {
        None => MAX_PAGE,
        Some(n) => n.parse::<usize>().map_err(|_| {
            ApiError::new(
                ErrorCode::SizeInvalid,
                format!("n={:?} is not a number", parts::truncate(n)),
            )
        })?,
    };
    let n = n.min(MAX_PAGE);
    if entries.len() > n {
        entries.truncate(n);
        let next = entries.last().cloned().map(|last| (n, last));
        Ok((entries, next))
    } else {
        Ok((entries, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let entries: Vec<String> = ["c", "a", "b", "d"].map(String::from).to_vec();
        let params = Params {
            n: Some("2".into()),
            ..Params::default()
        };
        let (page, next) = paginate(entries.clone(), &params).expect("page");
        assert_eq!(page, ["a", "b"]);
        assert_eq!(next, Some((2, "b".to_owned())));
        let params = Params {
            n: Some("2".into()),
            last: Some("b".into()),
            ..Params::default()
        };
        let (page, next) = paginate(entries, &params).expect("page");
        assert_eq!(page, ["c", "d"]);
        assert_eq!(next, None);
    }
}

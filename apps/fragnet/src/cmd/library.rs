//! `fragnet add FILE --to URL` and `fragnet remove ID --from URL`: a running node's
//! library over its HTTP API (`POST /library`, `DELETE /library/{id}`). The file is
//! streamed from disk, never read whole into memory.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use fragnet_core::VideoId;
use fragnet_core::ratelimit::human_bytes;
use serde::Deserialize;

use crate::cli::{AddArgs, RemoveArgs};
use crate::config;

/// What the node answered to `POST /library`.
#[derive(Debug, Deserialize)]
struct Added {
    video: VideoId,
    name: String,
    size: u64,
    fragments: u32,
    player: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
}

/// The token: `--token-file`, else `library.token` / `library.token_file` from the
/// configuration layers (`FRAGNET_LIBRARY__TOKEN`).
fn token(sources: &config::Sources, file: Option<&std::path::Path>) -> Result<Option<String>> {
    if let Some(f) = file {
        return Ok(fragnet_core::secret::resolve(
            "--token-file",
            None,
            Some(f),
        )?);
    }
    let cfg = config::load(sources, &config::Overrides::default())?;
    cfg.library_token()
}

fn base(url: &str) -> Result<String> {
    let u = url.trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        bail!("{url:?}: expected the node's HTTP address, e.g. http://localhost:8001");
    }
    Ok(u.to_string())
}

async fn refusal(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or(text);
    anyhow::anyhow!("the node answered {status}: {msg}")
}

/// Uploads the file; prints the video id and where to watch it.
pub async fn add(sources: &config::Sources, a: AddArgs) -> Result<()> {
    let base = base(&a.to)?;
    let token = token(sources, a.token_file.as_deref())?;
    let meta = tokio::fs::metadata(&a.file)
        .await
        .with_context(|| format!("reading {}", a.file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", a.file.display());
    }
    let name = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the file has no name")?;
    let mut query: Vec<(&str, String)> = vec![("name", name)];
    if let Some(n) = a.fragments {
        query.push(("fragments", n.to_string()));
    }
    if let Some(c) = &a.chunk_size {
        let bytes = fragnet_core::ratelimit::parse_bytes(c)
            .map_err(|e| anyhow::anyhow!("--chunk-size: {e}"))?;
        query.push(("chunk_size", bytes.to_string()));
    }
    let file = tokio::fs::File::open(&a.file)
        .await
        .with_context(|| format!("opening {}", a.file.display()))?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(a.timeout.max(1)))
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut req = client
        .post(format!("{base}/library"))
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, meta.len())
        .body(body);
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    eprintln!(
        "uploading {} ({}) to {base}…",
        a.file.display(),
        human_bytes(meta.len())
    );
    let resp = req
        .send()
        .await
        .with_context(|| format!("uploading to {base}/library"))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    let added: Added = resp
        .json()
        .await
        .context("reading the node's answer to the upload")?;
    println!(
        "Added {} ({}, {} fragments)",
        added.name,
        human_bytes(added.size),
        added.fragments
    );
    println!("  video id   {}", added.video);
    println!("  player     {base}{}", added.player);
    // The node knows its own reachable addresses and manager: it makes the link.
    let link = async {
        let r = client
            .get(format!("{base}/videos/{}/link", added.video))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.error_for_status().ok()?.json().await.ok()?;
        v["link"].as_str().map(str::to_string)
    };
    match link.await {
        Some(l) => println!("  share link {l}"),
        None => println!(
            "  share link none: the node advertises no address others can dial (set --advertise) and no manager"
        ),
    }
    Ok(())
}

/// Removes the video from the node.
pub async fn remove(sources: &config::Sources, a: RemoveArgs) -> Result<()> {
    let base = base(&a.from)?;
    let video: VideoId = a
        .video
        .parse()
        .map_err(|e| anyhow::anyhow!("{:?} is not a video id: {e}", a.video))?;
    let token = token(sources, a.token_file.as_deref())?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut req = client.delete(format!("{base}/library/{video}"));
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("asking {base} to remove {video}"))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    println!("Removed {video} from {base}");
    Ok(())
}

//! `pillowtop status`: the pillows' status from the feed and the store,
//! with the positions running processes hold ahead of their checkpoints
//! (asked of each over its admin endpoint, `/status/live`), as one screen,
//! JSON, or a screen redrawn every 2 seconds (`--watch`).

use anyhow::Result;
use pillowtop::admin::Client;
use pillowtop::config::HostConfig;
use pillowtop::feed::Feed;
use pillowtop::process::selected;
use pillowtop::status::{self, Live, Status};
use pillowtop::store::{Liveness, Store};
use std::time::Duration;

/// How long a running process may take to say where it is; one that does
/// not answer is left out (its checkpoint stands for it).
const LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often `--watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub async fn status_command(
    config: &HostConfig,
    pillow: Option<&str>,
    json: bool,
    watch: bool,
) -> Result<()> {
    let feed = Feed::open(&config.feed).await?;
    let store = Store::connect(&config.store).await?;
    let client = Client::for_config(&config.admin);
    loop {
        let status = gather(config, pillow, &feed, &store, &client).await?;
        let text = if json {
            serde_json::to_string_pretty(&status)? + "\n"
        } else {
            status::render(&status)
        };
        if !watch {
            print!("{text}");
            return Ok(());
        }
        // Clear the screen and home the cursor, then draw.
        print!(
            "\x1b[2J\x1b[H{text}\nrefreshed every {}s; Ctrl-C to stop\n",
            WATCH_EVERY.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn gather(
    config: &HostConfig,
    pillow: Option<&str>,
    feed: &Feed,
    store: &Store,
    client: &Client,
) -> Result<Status> {
    let pillows = selected(config, pillow)?;
    let max = config.runtime.max_component_bytes();
    let mut status = status::gather(&pillows, feed, store, max).await?;
    let mut urls: Vec<String> = status
        .pillows
        .iter()
        .flat_map(|p| &p.processes)
        .filter(|p| p.state == Liveness::Running.as_str())
        .filter_map(|p| p.admin_url.clone())
        .collect();
    urls.sort();
    urls.dedup();
    let mut live: Vec<Live> = Vec::new();
    for url in urls {
        match tokio::time::timeout(LIVE_TIMEOUT, client.live(&url)).await {
            Ok(Ok(mut positions)) => live.append(&mut positions),
            Ok(Err(e)) => {
                tracing::debug!(%url, error = %e, "no live positions; its checkpoints stand")
            }
            Err(_) => tracing::debug!(%url, "no live positions in time; its checkpoints stand"),
        }
    }
    status.overlay(&live);
    Ok(status)
}

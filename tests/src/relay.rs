//! A TCP relay to the AWS emulator that can be cut, to play an AWS outage for whoever is given
//! its endpoint: the operator, or the aggregator's pod.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Relay {
    up: Arc<AtomicBool>,
    pub endpoint: String,
}

impl Relay {
    /// Relays from a free port on the emulator endpoint's own host (so pods reach it too) to the
    /// emulator; starts cut.
    pub async fn start(emulator: &str) -> anyhow::Result<Self> {
        let target = emulator.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let host = target.rsplit_once(':').map_or(target.as_str(), |(host, _)| host);
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let up = Arc::new(AtomicBool::new(false));
        let relay_up = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !relay_up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self { up, endpoint })
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

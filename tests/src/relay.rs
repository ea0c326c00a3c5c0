//! A TCP relay to the AWS emulator that can be cut, to play an AWS outage for whoever is given
//! its endpoint: the operator, or the aggregator's pod.

use tokio::sync::watch;

pub struct Relay {
    up: watch::Sender<bool>,
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
        let (up, watched) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*watched.borrow() {
                    continue;
                }
                let target = target.clone();
                let mut connection_watch = watched.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    // A cut ends established connections too: clients pool them, and an outage that
                    // only refused new ones would leave a pooled connection working through it.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = connection_watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Self { up, endpoint })
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

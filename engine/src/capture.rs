//! Packet capture over the API: `GET /networks/{id}/capture` and
//! `GET /sandboxes/{id}/capture[?network=NET]`.
//!
//! Contract: the answer is `200` with `Content-Type: application/vnd.tcpdump.pcap` and a
//! body that is a classic pcap file (written with the `pcap-file` crate): the global
//! header (link type Ethernet, microsecond timestamps, snap length [`SNAPLEN`], this
//! host's byte order) at once, then one record per frame, as the switch hands them
//! over (`tapnet_switch::runtime::NetworkHandle::capture`): a network capture gets every
//! frame the network's switch reads from any port (endpoints, gateway, uplink or
//! tunnel); a sandbox capture every frame the sandbox's port on that network sends and
//! is sent. Frames are Ethernet frames as on the wire of the tap (GSO super-frames are
//! recorded whole, up to [`SNAPLEN`] bytes, with their real length), stamped when the
//! switch handled them. The stream lasts until the client goes away (the subscriber is
//! then removed within [`IDLE_CHECK`]), the port or network is removed, or the daemon
//! stops. A reader slower than the traffic loses frames (counted by the switch, logged
//! when the capture ends), it never slows the datapath. Each stream has one thread
//! (blocking on the switch's queue) feeding the HTTP body through a small channel.
//! Query parameters other than `network` (sandbox capture) are refused (400); more than
//! `tapnet_switch::runtime::MAX_CAPTURES` captures of one network: 429.

use crate::api::ApiError;
use crate::controller::Controller;
use crate::error::Error;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};
use tapnet_switch::runtime::{Capture, CapturedFrame};
use tokio::sync::mpsc;

/// Largest part of a frame recorded (tcpdump's default snap length); a longer frame
/// (a GSO super-frame) is cut there and keeps its real length in the record.
pub const SNAPLEN: u32 = 262_144;
/// How often a stream with no traffic checks that its client is still there.
pub const IDLE_CHECK: Duration = Duration::from_millis(250);
/// Body chunks in flight between the capture thread and the HTTP connection.
const CHUNKS_IN_FLIGHT: usize = 16;
/// A chunk is sent once it holds this many bytes (or the switch's queue is empty).
const CHUNK_BYTES: usize = 64 * 1024;
/// Content type of a pcap stream.
pub const PCAP_CONTENT_TYPE: &str = "application/vnd.tcpdump.pcap";

/// A `Write` into a buffer shared with the capture thread, which takes the bytes out.
#[derive(Clone, Default)]
struct SharedBuf(Rc<RefCell<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The pcap global header of a capture stream.
pub fn pcap_header() -> PcapHeader {
    PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    }
}

/// Append one record for `f` to `w`.
fn write_record(w: &mut PcapWriter<SharedBuf>, f: &CapturedFrame) {
    let ts = f.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let len = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
    let keep = f.data.len().min(SNAPLEN as usize);
    let data = f.data.get(..keep).unwrap_or_default();
    // Only a timestamp past 2106 can fail (u32 seconds): such a frame is skipped.
    if let Err(e) = w.write_packet(&PcapPacket::new(ts, len, data)) {
        tracing::debug!(error = %e, "capture: frame not recorded");
    }
}

/// Move frames from `cap` into `tx` as pcap chunks until the client or the capture
/// goes away. Runs on its own thread.
fn pump(cap: Capture, tx: mpsc::Sender<Result<Bytes, std::io::Error>>, what: String) {
    let buf = SharedBuf::default();
    let mut w = match PcapWriter::with_header(buf.clone(), pcap_header()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "capture: pcap header");
            return;
        }
    };
    let take = || Bytes::from(std::mem::take(&mut *buf.0.borrow_mut()));
    if tx.blocking_send(Ok(take())).is_err() {
        return;
    }
    let mut frames = 0u64;
    loop {
        match cap.recv_timeout(IDLE_CHECK) {
            Ok(f) => {
                write_record(&mut w, &f);
                frames += 1;
                // Drain what is queued now into the same chunk.
                while buf.0.borrow().len() < CHUNK_BYTES {
                    match cap.recv_timeout(Duration::ZERO) {
                        Ok(f) => {
                            write_record(&mut w, &f);
                            frames += 1;
                        }
                        Err(_) => break,
                    }
                }
                if tx.blocking_send(Ok(take())).is_err() {
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if tx.is_closed() {
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    tracing::info!(capture = %what, frames, dropped = cap.dropped(), "capture ended");
}

/// Stream a capture (see the module doc). `network`/`sandbox` name what to capture.
pub async fn stream(
    ctl: &Controller,
    network: Option<&str>,
    sandbox: Option<&str>,
) -> Result<Response, ApiError> {
    let (net, endpoint, cap) = ctl.capture(network, sandbox).await.map_err(|e| match e {
        Error::Datapath {
            source: tapnet_switch::runtime::Error::TooManyCaptures,
            ..
        } => ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "network {} has {} captures running already; stop one first",
                network.unwrap_or_default(),
                tapnet_switch::runtime::MAX_CAPTURES
            ),
        },
        e => ApiError::from(e),
    })?;
    let what = match (sandbox, &endpoint) {
        (Some(sb), Some(ep)) => format!("sandbox {sb} (endpoint {ep}) on network {}", net.name),
        _ => format!("network {}", net.name),
    };
    tracing::info!(capture = %what, "capture started");
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    std::thread::Builder::new()
        .name("tapnet-capture".into())
        .spawn(move || pump(cap, tx, what))
        .map_err(|e| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("cannot start a capture thread: {e}"),
        })?;
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut resp = Body::from_stream(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PCAP_CONTENT_TYPE),
    );
    Ok(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;
    use std::time::SystemTime;

    #[test]
    fn records_read_back_with_pcap_reader() {
        let buf = SharedBuf::default();
        let mut w = PcapWriter::with_header(buf.clone(), pcap_header()).unwrap();
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        write_record(
            &mut w,
            &CapturedFrame {
                time: t,
                data: vec![7u8; 60],
            },
        );
        // A GSO super-frame (the longest a port reads) is recorded whole.
        let longest = tapnet_switch::runtime::RECV_BUF_LEN - tapnet_switch::VNET_HDR_LEN;
        write_record(
            &mut w,
            &CapturedFrame {
                time: SystemTime::now(),
                data: vec![1u8; longest],
            },
        );
        let bytes = buf.0.borrow().clone();
        let mut r = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header().datalink, DataLink::ETHERNET);
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.timestamp, Duration::from_micros(1_700_000_000_123_456));
        assert_eq!((p.orig_len, p.data.len()), (60, 60));
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.orig_len as usize, longest);
        assert_eq!(p.data.len(), longest);
        assert!(r.next_packet().is_none());
    }
}

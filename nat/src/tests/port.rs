use super::*;

/// True if the (non-blocking) eventfd was signalled since it was last read; reads it.
fn fired(fd: &EventFd) -> bool {
    fd.read().is_ok()
}

fn frame(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

#[test]
fn frames_cross_whole_and_in_order_both_ways() {
    let (mut sw, gw) = link().expect("link");
    assert!(!fired(&gw.shared.gateway_ready));
    for (i, len) in [60usize, 65536 + 12, 1514].into_iter().enumerate() {
        assert_eq!(sw.send(&frame(i as u8, len)).expect("send"), len);
    }
    // One wake-up for the first frame, none for the ones behind it.
    assert!(fired(&gw.shared.gateway_ready));
    let mut got = VecDeque::new();
    assert_eq!(gw.recv(&mut got, 2), 2);
    assert_eq!(gw.recv(&mut got, 16), 1);
    assert_eq!(gw.recv(&mut got, 16), 0);
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(lens, [60, 65536 + 12, 1514]);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(*f, frame(i as u8, f.len()));
    }
    // Toward the switch: whole, in order, cut to a short buffer, then WouldBlock.
    gw.send(frame(7, 100)).expect("send");
    gw.send(frame(8, 3000)).expect("send");
    assert!(fired(&sw.shared.switch_ready));
    let mut buf = vec![0u8; 2000];
    assert_eq!(sw.recv(&mut buf).expect("recv"), 100);
    assert_eq!(buf[..100], frame(7, 100)[..]);
    assert_eq!(sw.recv(&mut buf).expect("recv"), 2000);
    assert_eq!(buf[..], frame(8, 3000)[..2000]);
    let e = sw.recv(&mut buf).expect_err("empty");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // Consumed buffers come back to the gateway for reuse.
    let mut spent = Vec::new();
    gw.take_spent(&mut spent);
    assert_eq!(spent.len(), 2);
    // After the queue was found empty, the next frame wakes the consumer again.
    gw.send(frame(9, 10)).expect("send");
    assert!(fired(&sw.shared.switch_ready));
}

#[test]
fn given_buffers_are_reused_for_frames_toward_the_gateway() {
    let (mut sw, gw) = link().expect("link");
    let mut b = Vec::with_capacity(70_000);
    b.extend_from_slice(&[0xee; 500]);
    let ptr = b.as_ptr();
    gw.give(b);
    sw.send(&frame(1, 1500)).expect("send");
    let mut got = VecDeque::new();
    gw.recv(&mut got, 1);
    let f = got.pop_front().expect("frame");
    assert_eq!(f.as_ptr(), ptr, "the given buffer carries the frame");
    assert_eq!(f, frame(1, 1500), "no byte of the old contents is left");
}

#[test]
fn a_full_queue_refuses_and_signals_room() {
    let (mut sw, gw) = link().expect("link");
    let big = frame(3, 60_000);
    let mut queued = 0;
    while sw.send(&big).is_ok() {
        queued += 1;
    }
    assert_eq!(queued, QUEUE_BYTES / big.len());
    let e = sw.send(&big).expect_err("full");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // Toward the switch: the gateway gets its frame back, then a signal once there is room.
    let mut n = 0;
    let back = loop {
        match gw.send(big.clone()) {
            Ok(()) => n += 1,
            Err(x) => break x,
        }
    };
    assert_eq!(n, queued);
    assert_eq!(back.1, io::ErrorKind::WouldBlock);
    assert_eq!(back.0, big);
    assert!(!fired(&gw.shared.gateway_space));
    let mut buf = vec![0u8; 70_000];
    assert_eq!(sw.recv(&mut buf).expect("recv"), big.len());
    assert!(
        fired(&gw.shared.gateway_space),
        "room again must wake the gateway"
    );
    gw.send(back.0).expect("room for one");
    // A frame larger than the whole bound still passes an empty queue.
    let (mut sw, gw) = link().expect("link");
    let _ = &mut sw;
    gw.send(vec![0u8; QUEUE_BYTES + 1]).expect("alone");
}

#[test]
fn a_dropped_end_refuses_sends_and_drains_what_was_queued() {
    let (mut sw, gw) = link().expect("link");
    gw.send(frame(1, 64)).expect("send");
    drop(gw);
    let e = sw.send(&frame(2, 64)).expect_err("gateway gone");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    let mut buf = [0u8; 128];
    assert_eq!(sw.recv(&mut buf).expect("queued frame"), 64);
    let e = sw.recv(&mut buf).expect_err("then empty");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

    let (sw, gw) = link().expect("link");
    drop(sw);
    let (back, kind) = gw.send(frame(3, 64)).expect_err("switch gone");
    assert_eq!(kind, io::ErrorKind::ConnectionRefused);
    assert_eq!(back, frame(3, 64));
    assert!(
        fired(&gw.shared.gateway_space),
        "a gateway waiting for room is woken"
    );
}

#[test]
fn the_gateway_is_signalled_only_while_parked() {
    let (mut sw, gw) = link().expect("link");
    let mut q = VecDeque::new();
    // Parked from the start: the first frame signals, the next one does not.
    sw.send(&frame(1, 60)).expect("send");
    sw.send(&frame(2, 60)).expect("send");
    assert!(fired(&gw.shared.gateway_ready));
    assert!(!fired(&gw.shared.gateway_ready));
    // Frames queued: parking fails (the caller must not sleep).
    assert!(!gw.park());
    assert_eq!(gw.recv(&mut q, 16), 2);
    // Awake: a frame into the empty queue is not signalled (the caller reads every turn).
    gw.unpark();
    sw.send(&frame(3, 60)).expect("send");
    assert!(!fired(&gw.shared.gateway_ready));
    assert_eq!(gw.recv(&mut q, 16), 1);
    // Parked on an empty queue: the next frame signals.
    assert!(gw.park());
    sw.send(&frame(4, 60)).expect("send");
    assert!(fired(&gw.shared.gateway_ready));
    assert_eq!(gw.recv(&mut q, 16), 1);
    let tags: Vec<u8> = q.iter().map(|f| f[0]).collect();
    assert_eq!(tags, [1, 2, 3, 4]);
}

#[test]
fn batches_lend_long_frames_and_copy_short_ones_in_order() {
    use tapnet_switch::runtime::{BATCH, BATCH_BUF_LEN, RECV_BUF_LEN};
    let (mut sw, gw) = link().expect("link");
    // A super-frame in a snug buffer (lent), a short frame (copied), a long frame in a
    // roomy buffer (copied: filling its spare capacity would cost as much), another
    // super-frame (lent).
    let snug = |tag: u8| {
        let mut b = Vec::with_capacity(65_536 + 12);
        b.extend_from_slice(&frame(tag, 65_536 + 12));
        b
    };
    let mut roomy = Vec::with_capacity(65_536 + 12);
    roomy.extend_from_slice(&frame(3, 20_000));
    let sent = [snug(1), frame(2, 80), roomy, snug(4)];
    let want: Vec<Vec<u8>> = sent.iter().map(|f| f.to_vec()).collect();
    for f in sent {
        gw.send(f).expect("send");
    }
    let mut batch = FrameBatch::new(BATCH, RECV_BUF_LEN, BATCH_BUF_LEN);
    assert_eq!(sw.recv_batch(&mut batch).expect("batch"), 4);
    let stop = batch.take_stop().expect("stopped at the empty queue");
    assert_eq!(stop.kind(), io::ErrorKind::WouldBlock);
    let got: Vec<&[u8]> = batch.iter().collect();
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(*g, &w[..], "frames whole and in order");
    }
    // The short and the roomy frames were copied: their buffers went back for reuse.
    let mut spent = Vec::new();
    gw.take_spent(&mut spent);
    assert_eq!(spent.len(), 2);
    // Empty now: WouldBlock, no frame.
    batch.clear();
    let e = sw.recv_batch(&mut batch).expect_err("empty");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // A lent frame is read from the gateway's own buffer.
    let own = snug(5);
    let ptr = own.as_ptr();
    gw.send(own).expect("send");
    assert_eq!(sw.recv_batch(&mut batch).expect("batch"), 1);
    assert_eq!(
        batch.get(0).map(<[u8]>::as_ptr),
        Some(ptr),
        "lent, not copied"
    );
    assert_eq!(batch.get(0).map(<[u8]>::len), Some(65_536 + 12));
    // After the batch is cleared its spare buffers go back to the gateway.
    batch.clear();
    gw.send(snug(6)).expect("send");
    assert_eq!(sw.recv_batch(&mut batch).expect("batch"), 1);
    gw.take_spent(&mut spent);
    assert!(
        spent.iter().any(|b| b.len() >= LEND_MIN),
        "a spare buffer of the batch went back to the gateway"
    );
}

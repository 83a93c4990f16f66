//! The handshake in both roles, fed arbitrary bytes in every state: a genuine exchange runs up to
//! the chosen step, then the fuzzer's bytes arrive instead of (or after) the peer's next message.
#![no_main]

use std::sync::{Arc, OnceLock};

use glueberry_crypto::{Handshake, HandshakeConfig, Identity};
use libfuzzer_sys::fuzz_target;

fn configs() -> &'static (Arc<HandshakeConfig>, Arc<HandshakeConfig>) {
    static CONFIGS: OnceLock<(Arc<HandshakeConfig>, Arc<HandshakeConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let a = HandshakeConfig::new(&Identity::from_seed(&[1; 32]), "fuzz").expect("config");
        let b = HandshakeConfig::new(&Identity::from_seed(&[2; 32]), "fuzz").expect("config");
        (Arc::new(a), Arc::new(b))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let (a, b) = configs();
    let peer = b.peer_id();
    let Ok(mut initiator) = Handshake::initiator(a.clone(), Some(peer)) else {
        return;
    };
    let mut responder = Handshake::responder(b.clone());
    // Steps of the genuine exchange before the fuzzer's bytes: 0..=3.
    let steps = control % 4;
    let fuzz_initiator = control & 0x80 != 0;
    let chunk = usize::from((control >> 2) & 0x1f).max(1);
    let mut wire = Vec::new();
    for step in 0..steps {
        wire.clear();
        let (from, to) = if step % 2 == 0 {
            (&mut initiator, &mut responder)
        } else {
            (&mut responder, &mut initiator)
        };
        from.poll_transmit(&mut wire);
        if to.handle_input(&wire).is_err() {
            return;
        }
    }
    let target = if fuzz_initiator { &mut initiator } else { &mut responder };
    let was_finished = target.is_finished();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        if target.handle_input(piece).is_err() {
            break;
        }
        target.poll_transmit(&mut out);
    }
    if target.is_finished() && !was_finished {
        let session = if fuzz_initiator {
            initiator.into_session()
        } else {
            responder.into_session()
        };
        // Finishing on the fuzzer's bytes would be a break of the handshake: they cannot carry
        // the peer's signature over its static key.
        if let Ok(session) = session {
            panic!("a session from forged bytes with {}", session.peer_id());
        }
    }
});

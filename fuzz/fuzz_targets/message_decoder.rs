//! Random bytes into the message decoder: must return an error or a message that round-trips,
//! never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vespa_proto::message::{self, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = message::decode::<Message>(data) {
        let again = message::encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(message::decode::<Message>(&again).expect("re-decodes"), msg);
    }
});

//! CHUNK_RESPONSEs after ERROR LargeResponse (`tsm::spdm::chunk`): whatever the responder sends,
//! the reassembly stays within the TSM's MaxSPDMmsgSize, a refused chunk changes nothing (the
//! next CHUNK_GET asks for the same number), and a whole message is exactly the chunks' bytes in
//! order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::wire::split;
use tsm::doe::{self, ObjectType};
use tsm::spdm::chunk::{ChunkGet, MAX_MESSAGE, RESPONSE_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut c = Box::new(ChunkGet::new(0x12, 0x7A));
    let mut carried = Vec::new();
    for (i, answer) in split(data).into_iter().enumerate() {
        let asked = c.request();
        match c.step(answer) {
            Ok(last) => {
                let header = RESPONSE_HEADER_BYTES + if carried.is_empty() { 4 } else { 0 };
                let size = u32::from_le_bytes([answer[8], answer[9], answer[10], answer[11]]) as usize;
                carried.extend_from_slice(&answer[header..header + size]);
                if last {
                    let object = c.object().expect("a whole message is framed");
                    let message = doe::decode_as(object, ObjectType::Spdm).expect("a clear SPDM object");
                    assert!(message.len() <= MAX_MESSAGE + 3);
                    assert_eq!(&message[..carried.len()], &carried[..], "the chunks, in order");
                    return;
                }
                assert!(c.object().is_none(), "not whole before the last chunk");
            }
            Err(_) => assert_eq!(c.request(), asked, "answer {i}: a refused chunk changes nothing"),
        }
    }
});

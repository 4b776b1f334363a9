//! Feeds arbitrary bytes to the hub's first look at a site's message: protobuf
//! decoding of the wire `SiteMessage` (and of a bare `SiteEvent`), then the one
//! validating conversion to the domain `SiteEvent`. Nothing may panic; an event
//! that is accepted must come back the same through the wire form (what the agent
//! sends) and through its canonical JSON (what both stores keep and hash).
#![no_main]

use carrel_proto::event::SiteEvent;
use carrel_proto::pb;
use carrel_proto::pb::site_message;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check(wire: pb::SiteEvent) {
    let Ok(event) = SiteEvent::try_from(wire) else {
        return;
    };
    let again = SiteEvent::try_from(pb::SiteEvent::from(&event))
        .unwrap_or_else(|e| panic!("the wire form of an accepted event is refused: {e}"));
    assert_eq!(again, event, "domain -> wire -> domain");
    let json = event.canonical_json();
    let stored: SiteEvent = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("canonical JSON {json} does not read back: {e}"));
    assert_eq!(stored, event, "domain -> canonical JSON -> domain");
    assert_eq!(
        stored.canonical_json(),
        json,
        "the canonical JSON is stable"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = pb::SiteMessage::decode(data) {
        if let Some(site_message::Body::Events(batch)) = message.body {
            for wire in batch.events {
                check(wire);
            }
        }
    }
    if let Ok(wire) = pb::SiteEvent::decode(data) {
        check(wire);
    }
});

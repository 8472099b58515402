//! Every answer body of the upstream APIs (CEC web channel, Tencent IM): parsing never panics,
//! and what parses survives a round trip through the relay's own serialisation.
#![no_main]

use cec::wire::{ApplyTokenResponse, PollResponse, SendResponse, TokenByAkSkResponse};
use cec::wire_ops::{
    ClickToCallEventsResponse, ClickToCallSupportResponse, DownloadResponse,
    MobileAgentCallResponse, PhraseResponse, QueueInfoResponse, ResultResponse, UploadResponse,
};
use tim::wire::TimAnswer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<PollResponse>(data) {
        let again: PollResponse =
            serde_json::from_value(serde_json::to_value(&p).expect("serialises")).expect("parses");
        assert_eq!(again, p);
    }
    let _ = serde_json::from_slice::<SendResponse>(data);
    let _ = serde_json::from_slice::<ApplyTokenResponse>(data);
    let _ = serde_json::from_slice::<TokenByAkSkResponse>(data);
    let _ = serde_json::from_slice::<ResultResponse>(data);
    let _ = serde_json::from_slice::<QueueInfoResponse>(data);
    let _ = serde_json::from_slice::<UploadResponse>(data);
    let _ = serde_json::from_slice::<DownloadResponse>(data);
    let _ = serde_json::from_slice::<PhraseResponse>(data);
    let _ = serde_json::from_slice::<ClickToCallEventsResponse>(data);
    let _ = serde_json::from_slice::<ClickToCallSupportResponse>(data);
    let _ = serde_json::from_slice::<MobileAgentCallResponse>(data);
    if let Ok(a) = serde_json::from_slice::<TimAnswer>(data) {
        let _ = a.is_ok();
    }
});

//! Checks of an UpMessage against the documented limits, before any upstream call. Each refusal
//! names the field and the limit.

use cec::wire::limits;
use contract::payload::UpMessage;
use contract::subjects::check_token;

pub use cec::wire::{CONTROL_TYPES, MEDIA_TYPES};

/// Why a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Refusal {
    /// The field at fault (`userId` for the subject's user token).
    pub field: String,
    pub reason: String,
}

fn refuse(field: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a CEC user id: a routable subject token of 1–24 characters (send `from`, applyToken
/// `userId`).
pub fn check_user_id(user: &str) -> Result<(), Refusal> {
    check_token(user).map_err(|e| refuse("userId", format!("{user:?} {e}")))?;
    let n = user.chars().count();
    if n > limits::USER_ID_MAX_CHARS {
        return Err(refuse(
            "userId",
            format!(
                "is {n} characters; CEC allows 1 to {}",
                limits::USER_ID_MAX_CHARS
            ),
        ));
    }
    Ok(())
}

/// Checks a `messageId`: 1–32 characters, no comma.
pub fn check_message_id(id: &str) -> Result<(), Refusal> {
    let n = id.chars().count();
    if n == 0 || n > limits::MESSAGE_ID_MAX_CHARS {
        return Err(refuse(
            "messageId",
            format!(
                "is {n} characters; CEC allows 1 to {}",
                limits::MESSAGE_ID_MAX_CHARS
            ),
        ));
    }
    if id.contains(',') {
        return Err(refuse("messageId", "must not contain a comma"));
    }
    // Not a documented limit, but an id is a key in the database (PostgreSQL's text cannot hold
    // NUL) and in logs: control characters are refused rather than mangled.
    if id.chars().any(char::is_control) {
        return Err(refuse("messageId", "must not contain control characters"));
    }
    Ok(())
}

/// The media type a message is sent as: the given one, else for a message carrying a file the
/// one its file type implies (jpg/png/bmp → IMAGE, mp3/aac → AUDIO, mp4 → VIDEO, txt/csv → FILE),
/// else TEXT.
pub fn effective_media_type(m: &UpMessage) -> String {
    if let Some(t) = &m.media_type {
        return t.clone();
    }
    match m.file.as_ref().map(|f| f.file_type.to_ascii_lowercase()) {
        Some(t) => match t.as_str() {
            "jpg" | "png" | "bmp" | "bpm" => "IMAGE",
            "mp3" | "aac" => "AUDIO",
            "mp4" => "VIDEO",
            _ => "FILE",
        }
        .to_owned(),
        None => "TEXT".to_owned(),
    }
}

/// Media types a file can be sent as.
const FILE_MEDIA_TYPES: &[&str] = &[
    "IMAGE",
    "AUDIO",
    "VIDEO",
    "FILE",
    "FILE_IMAGE",
    "FILE_VIDEO",
];

fn check_file(m: &UpMessage, f: &contract::payload::UpFile) -> Result<(), Refusal> {
    use base64::Engine as _;
    if m.control_type() != "CHAT" {
        return Err(refuse("file", "only a CHAT message can carry a file"));
    }
    let ty = f.file_type.to_ascii_lowercase();
    if !cec::wire::FILE_TYPES.contains(&ty.as_str()) {
        return Err(refuse(
            "file.type",
            format!(
                "{:?} is not one of jpg, png, bmp, mp3, aac, mp4, txt, csv",
                f.file_type
            ),
        ));
    }
    let mt = effective_media_type(m);
    if !FILE_MEDIA_TYPES.contains(&mt.as_str()) {
        return Err(refuse(
            "mediaType",
            format!(
                "{mt:?} cannot carry a file; use one of {}",
                FILE_MEDIA_TYPES.join(", ")
            ),
        ));
    }
    if m.content.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(refuse(
            "content",
            "must be empty with a file: the relay builds it from the upload",
        ));
    }
    if f.name.trim().is_empty() || f.name.contains(',') {
        return Err(refuse(
            "file.name",
            "must be non-empty and contain no comma (CEC's FILE content is comma-separated)",
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(f.data.as_bytes())
        .map_err(|e| refuse("file.data", format!("is not base64: {e}")))?;
    Ok(())
}

/// The `content` CEC expects for an uploaded file (send doc, 1.2): the fileId for IMAGE, AUDIO
/// and VIDEO; "name,size,fileId,type" for FILE; "fileId,type" for FILE_IMAGE and FILE_VIDEO.
pub fn file_content(
    media_type: &str,
    name: &str,
    size: usize,
    file_id: &str,
    file_type: &str,
) -> String {
    match media_type {
        "FILE" => format!("{name},{size},{file_id},{file_type}"),
        "FILE_IMAGE" | "FILE_VIDEO" => format!("{file_id},{file_type}"),
        _ => file_id.to_owned(),
    }
}

/// Everything that can be checked without the upstream.
pub fn check_up(user: &str, m: &UpMessage) -> Result<(), Refusal> {
    check_user_id(user)?;
    let ct = m.control_type();
    if !CONTROL_TYPES.contains(&ct) {
        return Err(refuse(
            "controlType",
            format!("{ct:?} is not one of {}", CONTROL_TYPES.join(", ")),
        ));
    }
    let mt = effective_media_type(m);
    let mt = mt.as_str();
    if !MEDIA_TYPES.contains(&mt) {
        return Err(refuse(
            "mediaType",
            format!("{mt:?} is not one of {}", MEDIA_TYPES.join(", ")),
        ));
    }
    if let Some(id) = &m.message_id {
        check_message_id(id)?;
    }
    let content = m.content.as_deref().unwrap_or("");
    if mt == "TEXT" && ct == "CHAT" && content.trim().is_empty() && m.file.is_none() {
        return Err(refuse("content", "is required for a TEXT CHAT message"));
    }
    if ct == "CHAT" && mt != "TEXT" && m.file.is_none() {
        if content.trim().is_empty() {
            return Err(refuse(
                "content",
                format!("is required for a {mt} CHAT message (or send a `file`)"),
            ));
        }
        if mt == "WEBCARD" {
            cec::wire::check_webcard(content).map_err(|desc| {
                refuse(
                    "content",
                    format!(
                        "{desc}: a WEBCARD is a JSON object with title, mediaFileId or redirectUrl, \
                         and mediaFileType empty or one of img, img/png, img/jpg"
                    ),
                )
            })?;
        }
    }
    if mt == "TEXT" && content.len() > limits::TEXT_MAX_BYTES {
        return Err(refuse(
            "content",
            format!(
                "is {} bytes; a TEXT message may have at most {} bytes (1 KB)",
                content.len(),
                limits::TEXT_MAX_BYTES
            ),
        ));
    }
    if let Some(a) = &m.sender_avatar {
        let n = a.chars().count();
        if n > limits::SENDER_AVATAR_MAX_CHARS {
            return Err(refuse(
                "senderAvatar",
                format!(
                    "is {n} characters; at most {}",
                    limits::SENDER_AVATAR_MAX_CHARS
                ),
            ));
        }
    }
    if let Some(t) = &m.trans_data
        && serde_json::from_str::<serde_json::Value>(t).is_err()
    {
        return Err(refuse("transData", "must be a JSON document (as a string)"));
    }
    if let Some(c) = &m.channel_config_id
        && c.trim().is_empty()
    {
        return Err(refuse("channelConfigId", "must not be empty"));
    }
    if let Some(f) = &m.file {
        check_file(m, f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(content: &str) -> UpMessage {
        UpMessage {
            content: Some(content.into()),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_chat() {
        assert_eq!(check_up("user-1", &chat("hello")), Ok(()));
    }

    #[test]
    fn refusals_name_the_field_and_the_limit() {
        let e = check_up("u", &chat(&"x".repeat(1025))).unwrap_err();
        assert_eq!(e.field, "content");
        assert!(e.reason.contains("1024"), "{e}");
        // 1024 bytes exactly is allowed, counted in bytes not characters.
        assert!(check_up("u", &chat(&"x".repeat(1024))).is_ok());
        assert!(check_up("u", &chat(&"汉".repeat(342))).is_err());

        let e = check_up(&"u".repeat(25), &chat("hi")).unwrap_err();
        assert_eq!(e.field, "userId");
        assert!(e.reason.contains("24"));

        let mut m = chat("hi");
        m.message_id = Some("a,b".into());
        assert_eq!(check_up("u", &m).unwrap_err().field, "messageId");
        m.message_id = Some("x".repeat(33));
        assert!(check_up("u", &m).unwrap_err().reason.contains("32"));
        m.message_id = Some("a\u{0}b".into());
        assert!(check_up("u", &m).unwrap_err().reason.contains("control"));

        let mut m = chat("hi");
        m.control_type = Some("SHOUT".into());
        assert_eq!(check_up("u", &m).unwrap_err().field, "controlType");

        let mut m = chat("hi");
        m.media_type = Some("GIF".into());
        assert_eq!(check_up("u", &m).unwrap_err().field, "mediaType");

        assert_eq!(check_up("u", &chat("  ")).unwrap_err().field, "content");

        let mut m = chat("hi");
        m.sender_avatar = Some("a".repeat(1025));
        assert_eq!(check_up("u", &m).unwrap_err().field, "senderAvatar");

        let mut m = chat("hi");
        m.trans_data = Some("{not json".into());
        assert_eq!(check_up("u", &m).unwrap_err().field, "transData");
    }

    #[test]
    fn webcards_are_checked_as_the_send_document_describes() {
        let card = |c: serde_json::Value| UpMessage {
            media_type: Some("WEBCARD".into()),
            content: Some(c.to_string()),
            ..Default::default()
        };
        use serde_json::json;
        assert!(
            check_up(
                "u",
                &card(json!({"title": "t", "redirectUrl": "https://x"}))
            )
            .is_ok()
        );
        assert!(
            check_up(
                "u",
                &card(json!({"title": "t", "mediaFileId": "f", "mediaFileType": "img/png"}))
            )
            .is_ok()
        );
        for (bad, why) in [
            (json!({"redirectUrl": "https://x"}), "title"),
            (json!({"title": "t"}), "mediaFileId or redirectUrl"),
            (
                json!({"title": "t", "mediaFileId": "f", "mediaFileType": "gif"}),
                "mediaFileType",
            ),
            (json!(["not", "an", "object"]), "Incorrect JSON format"),
        ] {
            let e = check_up("u", &card(bad)).unwrap_err();
            assert_eq!(e.field, "content");
            assert!(e.reason.contains(why), "{e}");
        }
        let mut m = card(json!({}));
        m.content = Some("{not json".into());
        assert!(check_up("u", &m).unwrap_err().reason.contains("JSON"));
        // Other media types without a file need their content (the fileId) too.
        let image = UpMessage {
            media_type: Some("IMAGE".into()),
            ..Default::default()
        };
        assert_eq!(check_up("u", &image).unwrap_err().field, "content");
    }

    #[test]
    fn connect_needs_no_content() {
        let m = UpMessage {
            control_type: Some("CONNECT".into()),
            ..Default::default()
        };
        assert!(check_up("u", &m).is_ok());
    }

    #[test]
    fn files_get_the_documented_content_and_media_type() {
        use contract::payload::UpFile;
        let with = |ty: &str, mt: Option<&str>| UpMessage {
            media_type: mt.map(str::to_owned),
            file: Some(UpFile {
                name: "a.b".into(),
                file_type: ty.into(),
                data: "AAE=".into(),
            }),
            ..Default::default()
        };
        assert_eq!(effective_media_type(&with("png", None)), "IMAGE");
        assert_eq!(effective_media_type(&with("aac", None)), "AUDIO");
        assert_eq!(effective_media_type(&with("mp4", None)), "VIDEO");
        assert_eq!(effective_media_type(&with("csv", None)), "FILE");
        assert_eq!(
            effective_media_type(&with("png", Some("FILE_IMAGE"))),
            "FILE_IMAGE"
        );
        assert!(check_up("u", &with("png", None)).is_ok());
        assert_eq!(
            file_content("FILE", "t.txt", 6, "k", "txt"),
            "t.txt,6,k,txt"
        );
        assert_eq!(file_content("FILE_IMAGE", "x", 1, "k", "png"), "k,png");
        assert_eq!(file_content("IMAGE", "x", 1, "k", "png"), "k");

        assert_eq!(
            check_up("u", &with("exe", None)).unwrap_err().field,
            "file.type"
        );
        assert_eq!(
            check_up("u", &with("png", Some("TEXT"))).unwrap_err().field,
            "mediaType"
        );
        let mut m = with("png", None);
        m.content = Some("x".into());
        assert_eq!(check_up("u", &m).unwrap_err().field, "content");
        let mut m = with("txt", None);
        m.file.as_mut().unwrap().name = "a,b.txt".into();
        assert_eq!(check_up("u", &m).unwrap_err().field, "file.name");
        let mut m = with("txt", None);
        m.file.as_mut().unwrap().data = "!!".into();
        assert_eq!(check_up("u", &m).unwrap_err().field, "file.data");
        let mut m = with("png", None);
        m.control_type = Some("CONNECT".into());
        assert_eq!(check_up("u", &m).unwrap_err().field, "file");
    }

    proptest::proptest! {
        #[test]
        fn up_messages_are_parsed_and_checked_without_panic(
            content in proptest::option::of(".{0,40}"),
            control in proptest::option::of("CHAT|CONNECT|DISCONNECT|.{0,8}"),
            media in proptest::option::of("TEXT|IMAGE|FILE|.{0,8}"),
            user in ".{0,30}",
        ) {
            let v = serde_json::json!({"content": content, "controlType": control, "mediaType": media});
            if let Ok(m) = serde_json::from_value::<UpMessage>(v) {
                let _ = check_up(&user, &m);
            }
            let _ = contract::subjects::check_token(&user);
            let _ = contract::Subjects::new("p").parse_cec(&format!("p.cec.{user}"));
        }
    }
}

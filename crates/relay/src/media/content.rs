//! Where a downlink message's media is: the `fileId` and `fileType` to ask `downloadFileStream`
//! for, read from the poll answer's `mediaType` and `content`.
//!
//! Huawei Cloud CEC's web channel API reference gives several forms, all accepted:
//! - `poll` (its response parameters, table 5-1): for IMAGE / VIDEO / AUDIO, `content` is "the
//!   media resource id", nothing else: the `fileType` is then the usual one of the media type
//!   (IMAGE → jpg, AUDIO → mp3, VIDEO → mp4), which is what the simulator serves;
//! - `send` (its request parameters, table 7-1): `"fileId,mediaType"`, e.g. `"objectKey,mp4"`, `"objectKey,mp3"`, and for an
//!   image `"objectKey.jpg"` — taken to be the same form with a dot (the id is what comes
//!   before the last dot, when what follows is a documented file type);
//! - FILE: `"name,size,fileId,type"`, read from the right so a name may hold commas;
//! - FILE_IMAGE / FILE_VIDEO: `"fileId,ext"` (or a bare id: jpg / mp4).
//!
//! Other media types (TEXT, LOCATE, WEBCARD…) carry no file.

/// The documented `fileType`s of `downloadFileStream` (the web channel API reference's table 9-1
/// writes "bpm", surely bmp).
pub const FILE_TYPES: &[&str] = &["jpg", "png", "bmp", "mp3", "aac", "mp4", "txt", "csv"];

/// The media types whose messages carry a file.
const MEDIA_TYPES: &[&str] = &[
    "IMAGE",
    "AUDIO",
    "VIDEO",
    "FILE",
    "FILE_IMAGE",
    "FILE_VIDEO",
];

/// A file to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub file_id: String,
    pub file_type: String,
}

/// The file a message of `media_type` with `content` refers to, if it is a file message.
pub fn media_ref(media_type: &str, content: &str) -> Option<MediaRef> {
    let content = content.trim();
    if content.is_empty() {
        return None;
    }
    let default_type = match media_type {
        "IMAGE" | "FILE_IMAGE" => "jpg",
        "AUDIO" => "mp3",
        "VIDEO" | "FILE_VIDEO" => "mp4",
        // FILE names its type; a bare id gets the most neutral documented one.
        "FILE" => "txt",
        _ => return None,
    };
    let parts: Vec<&str> = content.split(',').map(str::trim).collect();
    let (id, ty) = match (media_type, parts.as_slice()) {
        ("FILE", [.., size, id, ty]) if size.parse::<u64>().is_ok() => (*id, Some(*ty)),
        (_, [.., id, ty]) => (*id, Some(*ty)),
        (_, [only]) => match only.rsplit_once('.') {
            Some((id, ext))
                if !id.is_empty() && FILE_TYPES.contains(&ext.to_ascii_lowercase().as_str()) =>
            {
                (id, Some(ext))
            }
            _ => (*only, None),
        },
        _ => return None,
    };
    if id.is_empty() {
        return None;
    }
    // "fileId,mediaType" may also be read literally ("key,IMAGE"): a media type names no file
    // type, so the media type's usual one is asked for.
    let file_type = ty
        .map(|t| t.trim_start_matches('.').to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !MEDIA_TYPES.contains(&t.to_ascii_uppercase().as_str()))
        .unwrap_or_else(|| default_type.to_owned());
    // "bpm" is how the API reference spells bmp.
    let file_type = if file_type == "bpm" {
        "bmp".to_owned()
    } else {
        file_type
    };
    Some(MediaRef {
        file_id: id.to_owned(),
        file_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, ty: &str) -> Option<MediaRef> {
        Some(MediaRef {
            file_id: id.into(),
            file_type: ty.into(),
        })
    }

    #[test]
    fn every_documented_form_is_read() {
        assert_eq!(media_ref("IMAGE", "abc-1"), r("abc-1", "jpg"));
        assert_eq!(media_ref("AUDIO", "abc-1"), r("abc-1", "mp3"));
        assert_eq!(media_ref("VIDEO", " abc-1 "), r("abc-1", "mp4"));
        assert_eq!(media_ref("VIDEO", "key,mp4"), r("key", "mp4"));
        assert_eq!(media_ref("AUDIO", "key,aac"), r("key", "aac"));
        assert_eq!(media_ref("IMAGE", "key.png"), r("key", "png"));
        assert_eq!(media_ref("IMAGE", "key,PNG"), r("key", "png"));
        assert_eq!(media_ref("IMAGE", "key,bpm"), r("key", "bmp"));
        assert_eq!(
            media_ref("FILE", "report.csv,1024,key-9,csv"),
            r("key-9", "csv")
        );
        assert_eq!(media_ref("FILE", "a,b.txt,12,key,txt"), r("key", "txt"));
        assert_eq!(media_ref("FILE", "key,csv"), r("key", "csv"));
        assert_eq!(media_ref("FILE_IMAGE", "key,png"), r("key", "png"));
        assert_eq!(media_ref("FILE_VIDEO", "key"), r("key", "mp4"));
        assert_eq!(media_ref("IMAGE", "key,IMAGE"), r("key", "jpg"));
        assert_eq!(media_ref("VIDEO", "key,video"), r("key", "mp4"));
    }

    #[test]
    fn messages_without_a_file_have_none() {
        assert_eq!(media_ref("TEXT", "hello,world"), None);
        assert_eq!(media_ref("LOCATE", "1/2/here"), None);
        assert_eq!(media_ref("WEBCARD", "{}"), None);
        assert_eq!(media_ref("IMAGE", "  "), None);
        assert_eq!(media_ref("IMAGE", ",jpg"), None);
    }
}

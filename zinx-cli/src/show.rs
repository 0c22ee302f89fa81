//! One line per message: `<- id=1 len=5 text "hello"` or
//! `<- id=1 len=4 hex 0a0b0c0d`, long data cut short unless asked for whole.

use crate::input::to_hex;

/// Bytes of text shown before a line is cut short.
const TEXT_SHOWN: usize = 256;
/// Bytes shown in hex (two digits each) before a line is cut short.
const HEX_SHOWN: usize = 64;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Sent to the server.
    Out,
    /// Received from the server.
    In,
}

/// The line for one message; `full` shows all of its data.
pub(crate) fn message_line(dir: Direction, id: u32, data: &[u8], full: bool) -> String {
    let arrow = match dir {
        Direction::Out => "->",
        Direction::In => "<-",
    };
    let mut line = format!("{arrow} id={id} len={}", data.len());
    if data.is_empty() {
        return line;
    }
    let shown = match printable(data) {
        Some(text) => {
            let end = if full {
                text.len()
            } else {
                char_boundary_at_most(text, TEXT_SHOWN)
            };
            // Debug quoting escapes newlines and quotes, so a message stays on
            // its line and where its text ends is visible.
            line.push_str(&format!(" text {:?}", &text[..end]));
            end
        }
        None => {
            let end = if full {
                data.len()
            } else {
                data.len().min(HEX_SHOWN)
            };
            line.push_str(" hex ");
            line.push_str(&to_hex(&data[..end]));
            end
        }
    };
    if shown < data.len() {
        line.push_str(&format!(
            " ... ({shown} of {} bytes shown; --full shows all)",
            data.len()
        ));
    }
    line
}

/// The data as text, if it is UTF-8 without control characters other than
/// tabs and line endings (which print escaped).
fn printable(data: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(data).ok()?;
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .then_some(text)
}

/// The largest char boundary of `text` not past `limit`.
fn char_boundary_at_most(text: &str, limit: usize) -> usize {
    let mut end = limit.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_hex_and_empty() {
        let line = |data: &[u8]| message_line(Direction::In, 1, data, false);
        assert_eq!(line(b"hello"), r#"<- id=1 len=5 text "hello""#);
        assert_eq!(
            line(b"say \"hi\"\n"),
            r#"<- id=1 len=9 text "say \"hi\"\n""#
        );
        assert_eq!(
            line(&[0x0a, 0x0b, 0x0c, 0x0d]),
            "<- id=1 len=4 hex 0a0b0c0d"
        );
        assert_eq!(line(b"a\0b"), "<- id=1 len=3 hex 610062");
        assert_eq!(line(&[0xff, 0xfe]), "<- id=1 len=2 hex fffe");
        assert_eq!(line(b""), "<- id=1 len=0");
        assert_eq!(
            message_line(Direction::Out, 7, "é".as_bytes(), false),
            r#"-> id=7 len=2 text "é""#
        );
    }

    #[test]
    fn long_data_is_cut_unless_full() {
        // 300 bytes of 3-byte characters: byte 256 is inside the 86th, so the
        // cut comes before it.
        let text = "€".repeat(100);
        let cut = message_line(Direction::In, 1, text.as_bytes(), false);
        assert_eq!(
            cut,
            format!(
                r#"<- id=1 len=300 text "{}" ... (255 of 300 bytes shown; --full shows all)"#,
                "€".repeat(85)
            )
        );
        let whole = message_line(Direction::In, 1, text.as_bytes(), true);
        assert_eq!(whole, format!(r#"<- id=1 len=300 text "{text}""#));

        let bytes = vec![0u8; 100];
        let cut = message_line(Direction::In, 1, &bytes, false);
        assert_eq!(
            cut,
            format!(
                "<- id=1 len=100 hex {} ... (64 of 100 bytes shown; --full shows all)",
                "00".repeat(64)
            )
        );
        let whole = message_line(Direction::In, 1, &bytes, true);
        assert_eq!(whole, format!("<- id=1 len=100 hex {}", "00".repeat(100)));
    }
}

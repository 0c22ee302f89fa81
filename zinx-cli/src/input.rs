//! What the user asks to send: a message ID and its data as text, hex or a
//! file, from the command line or from a line typed in interactive mode.

use std::fmt;
use std::path::PathBuf;

/// Where a message's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The UTF-8 bytes of the text.
    Text(String),
    /// Hex digits, two per byte; whitespace between bytes is allowed.
    Hex(String),
    /// The whole content of a file.
    File(PathBuf),
}

/// An input that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputError(String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

impl Source {
    /// The bytes to send, at most `max_len` of them (longer data would be
    /// refused by the client's own framing with a message about a frame
    /// announcing too much, which reads like the server's fault).
    pub(crate) fn load(&self, max_len: u32) -> Result<Vec<u8>, InputError> {
        let data = match self {
            Source::Text(text) => text.as_bytes().to_vec(),
            Source::Hex(hex) => parse_hex(hex)?,
            Source::File(path) => std::fs::read(path)
                .map_err(|e| InputError(format!("cannot read file {}: {e}", path.display())))?,
        };
        if data.len() > usize::try_from(max_len).unwrap_or(usize::MAX) {
            return Err(InputError(format!(
                "the data is {} bytes, more than --max-len {max_len}",
                data.len()
            )));
        }
        Ok(data)
    }
}

/// Parses a message ID: a `u32`, decimal or `0x` hex.
pub(crate) fn parse_id(s: &str) -> Result<u32, InputError> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| {
        InputError(format!(
            "{s:?} is not a message ID (a number from 0 to {}, decimal or 0x hex)",
            u32::MAX
        ))
    })
}

/// Parses hex digits, two per byte, either case, with optional whitespace
/// between bytes (so a dump pasted from elsewhere works).
pub(crate) fn parse_hex(s: &str) -> Result<Vec<u8>, InputError> {
    let mut out = Vec::with_capacity(s.len() / 2);
    let mut high: Option<u8> = None;
    for (at, c) in s.char_indices() {
        if c.is_whitespace() && high.is_none() {
            continue;
        }
        let Some(digit) = c.to_digit(16) else {
            return Err(InputError(format!(
                "bad hex {s:?}: {c:?} at position {at} is not a hex digit"
            )));
        };
        // to_digit(16) is below 16: the cast keeps every bit.
        let digit = digit as u8;
        match high.take() {
            Some(h) => out.push(h << 4 | digit),
            None => high = Some(digit),
        }
    }
    if high.is_some() {
        return Err(InputError(format!(
            "bad hex {s:?}: odd number of digits (two per byte)"
        )));
    }
    Ok(out)
}

/// Lowercase hex, two digits per byte, no separators.
pub(crate) fn to_hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(data.len() * 2);
    for &b in data {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// One line typed in interactive mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// Nothing to do: an empty line or a `#` comment.
    Nothing,
    /// Send a message.
    Send(u32, Source),
    /// `:help`.
    Help,
    /// `:quit`.
    Quit,
}

/// What interactive mode understands, for `:help` and the banner.
pub(crate) const LINE_HELP: &str =
    "  ID TEXT          send TEXT (the rest of the line) as message ID
  ID hex:0a0b      send bytes given in hex
  ID file:PATH     send the content of a file
  ID text:TEXT     send TEXT even if it starts with hex: or file:
  ID               send an empty message
  :help            this help
  :quit            exit (so does the end of input)";

/// Parses a line typed in interactive mode (without its line ending).
pub(crate) fn parse_line(line: &str) -> Result<Line, InputError> {
    let line = line.trim_start();
    if line.trim_end().is_empty() || line.starts_with('#') {
        return Ok(Line::Nothing);
    }
    if let Some(command) = line.strip_prefix(':') {
        return match command.trim_end() {
            "q" | "quit" | "exit" => Ok(Line::Quit),
            "h" | "help" | "?" => Ok(Line::Help),
            other => Err(InputError(format!(
                "unknown command :{other} (:help lists what works)"
            ))),
        };
    }
    // The data is the rest of the line as typed: spaces in text are data.
    let (id, rest) = line
        .split_once(char::is_whitespace)
        .unwrap_or((line.trim_end(), ""));
    let id = parse_id(id)?;
    let source = if let Some(hex) = rest.strip_prefix("hex:") {
        Source::Hex(hex.to_owned())
    } else if let Some(path) = rest.strip_prefix("file:") {
        Source::File(PathBuf::from(path.trim()))
    } else {
        Source::Text(rest.strip_prefix("text:").unwrap_or(rest).to_owned())
    };
    Ok(Line::Send(id, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        assert_eq!(parse_hex("0a0B ff 00").unwrap(), [0x0a, 0x0b, 0xff, 0x00]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        assert_eq!(to_hex(&[0x0a, 0x0b, 0xff, 0x00]), "0a0bff00");
        assert!(parse_hex("0a0").unwrap_err().0.contains("odd number"));
        assert!(
            parse_hex("0x0a")
                .unwrap_err()
                .0
                .contains("'x' at position 1")
        );
        // A space inside a byte splits it: not two nibbles of one byte.
        assert!(parse_hex("0 a").is_err());
    }

    #[test]
    fn ids_are_u32_decimal_or_hex() {
        assert_eq!(parse_id("1").unwrap(), 1);
        assert_eq!(parse_id("0x10").unwrap(), 16);
        assert_eq!(parse_id("4294967295").unwrap(), u32::MAX);
        assert!(parse_id("4294967296").is_err());
        assert!(parse_id("-1").is_err());
        assert!(parse_id("one").is_err());
    }

    #[test]
    fn lines_name_an_id_and_a_source() {
        let send = |id, s: Source| Ok(Line::Send(id, s));
        assert_eq!(
            parse_line("1 hello  world "),
            send(1, Source::Text("hello  world ".into()))
        );
        assert_eq!(
            parse_line("2 hex:0a0b"),
            send(2, Source::Hex("0a0b".into()))
        );
        assert_eq!(
            parse_line("3 file:/tmp/x "),
            send(3, Source::File("/tmp/x".into()))
        );
        assert_eq!(
            parse_line("4 text:hex:00"),
            send(4, Source::Text("hex:00".into()))
        );
        assert_eq!(parse_line("  5"), send(5, Source::Text(String::new())));
        assert_eq!(parse_line(""), Ok(Line::Nothing));
        assert_eq!(parse_line("# note"), Ok(Line::Nothing));
        assert_eq!(parse_line(":quit"), Ok(Line::Quit));
        assert_eq!(parse_line(":help"), Ok(Line::Help));
        assert!(parse_line(":frobnicate").is_err());
        assert!(parse_line("x hello").is_err());
    }

    #[test]
    fn data_longer_than_the_maximum_is_refused() {
        assert_eq!(Source::Text("abc".into()).load(3).unwrap(), b"abc");
        assert!(Source::Text("abcd".into()).load(3).is_err());
        assert!(
            Source::File("/nonexistent/zinx-cli".into())
                .load(3)
                .unwrap_err()
                .0
                .contains("cannot read file /nonexistent/zinx-cli")
        );
    }
}

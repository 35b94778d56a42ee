//! The broker's text-line protocol, shared by the server and the client.
//!
//! Client to broker, one command per line (`\n` or `\r\n`):
//!
//! | line | meaning | answer |
//! |---|---|---|
//! | `AUTH:<token>` | first line, when the broker has a token | nothing, or `ERR:` and close |
//! | `SUB:<topic>` | subscribe | nothing, or `ERR:` |
//! | `UNSUB:<topic>` | unsubscribe | nothing |
//! | `PUB:<topic>:<message>` | publish; the message runs to the end of the line and may contain `:` | nothing, or `ERR:` |
//! | `PING` | are you there / did you take everything before this? | `PONG` |
//!
//! Broker to client: `MSG:<topic>:<message>` for each message on a subscribed topic,
//! `PONG`, and `ERR:<reason>` for a bad line (the connection stays usable, except after
//! a refused `AUTH` and after `ERR:slow consumer`). Empty lines are ignored.
//!
//! Lines are framed by [`LineCodec`], which wraps `tokio_util`'s `LinesCodec` and turns
//! its two recoverable errors (line too long, not UTF-8) into items, so the connection
//! survives them.

use bytes::{Bytes, BytesMut};
use fragnet_core::pubsub::check_topic;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// Default longest line, in bytes, not counting the line break.
pub const DEFAULT_MAX_LINE: usize = 4096;
/// The reason sent to a subscriber that is cut off for falling behind.
pub const SLOW_CONSUMER: &str = "slow consumer";

/// One command from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `AUTH:<token>`.
    Auth(&'a str),
    /// `SUB:<topic>`.
    Sub(&'a str),
    /// `UNSUB:<topic>`.
    Unsub(&'a str),
    /// `PUB:<topic>:<message>`.
    Pub {
        /// Topic.
        topic: &'a str,
        /// Message: everything after the second `:`.
        message: &'a str,
    },
    /// `PING`.
    Ping,
}

/// Why a line is not a valid command. `Display` is the reason sent after `ERR:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not one of the known commands.
    #[error("unknown command (expected SUB:<topic>, UNSUB:<topic>, PUB:<topic>:<message> or PING)")]
    Unknown,
    /// `PUB:<topic>` without the `:` that starts the message.
    #[error("missing ':' between topic and message (PUB:<topic>:<message>)")]
    MissingColon,
    /// The topic breaks the rules.
    #[error("{0}")]
    Topic(String),
    /// The line exceeded the limit; the rest of it was discarded.
    #[error("line too long (max {0} bytes)")]
    TooLong(usize),
    /// The line is not UTF-8 text; it was discarded.
    #[error("line is not UTF-8 text")]
    NotUtf8,
}

/// Parses one line (without its line break). `Ok(None)` for an empty line.
pub fn parse_command(line: &str) -> Result<Option<Command<'_>>, LineError> {
    if line.is_empty() {
        return Ok(None);
    }
    let topic = |t: &str| check_topic(t).map_err(|e| LineError::Topic(e.to_string()));
    let cmd = if line == "PING" {
        Command::Ping
    } else if let Some(t) = line.strip_prefix("SUB:") {
        topic(t)?;
        Command::Sub(t)
    } else if let Some(t) = line.strip_prefix("UNSUB:") {
        topic(t)?;
        Command::Unsub(t)
    } else if let Some(rest) = line.strip_prefix("PUB:") {
        // Topics cannot contain ':', so the first one ends the topic.
        let (t, message) = rest.split_once(':').ok_or(LineError::MissingColon)?;
        topic(t)?;
        Command::Pub { topic: t, message }
    } else if let Some(token) = line.strip_prefix("AUTH:") {
        Command::Auth(token)
    } else {
        return Err(LineError::Unknown);
    };
    Ok(Some(cmd))
}

/// `MSG:<topic>:<message>\n`.
pub fn msg_line(topic: &str, message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(6 + topic.len() + message.len());
    b.extend_from_slice(b"MSG:");
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(b":");
    b.extend_from_slice(message.as_bytes());
    b.extend_from_slice(b"\n");
    b.freeze()
}

/// `ERR:<reason>\n`, with any line break in the reason replaced so it stays one line.
pub fn err_line(reason: &str) -> Bytes {
    Bytes::from(format!("ERR:{}\n", reason.replace(['\r', '\n'], " ")))
}

/// `PONG\n`.
pub const PONG_LINE: &[u8] = b"PONG\n";

/// One framed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line of text, line break removed.
    Text(String),
    /// A line longer than the limit (the rest of it is skipped).
    TooLong,
    /// A line that is not UTF-8 (skipped).
    NotUtf8,
}

/// Splits bytes into [`Line`]s: `LinesCodec` with a length limit, whose recoverable
/// errors become items so one bad line does not end the connection. The last line
/// before end of input counts even without a line break.
#[derive(Debug, Clone)]
pub struct LineCodec {
    inner: LinesCodec,
    max: usize,
}

impl LineCodec {
    /// Lines up to `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        // One more byte for the '\r' of a CRLF line, which does not count against the limit.
        LineCodec {
            inner: LinesCodec::new_with_max_length(max_line.saturating_add(1)),
            max: max_line,
        }
    }

    /// The limit.
    pub fn max_line(&self) -> usize {
        self.max
    }
}

fn recover(
    r: Result<Option<String>, LinesCodecError>,
    max: usize,
) -> Result<Option<Line>, std::io::Error> {
    match r {
        Ok(Some(line)) if line.len() > max => Ok(Some(Line::TooLong)),
        Ok(line) => Ok(line.map(Line::Text)),
        Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
        // LinesCodec has already consumed the line when it finds it is not UTF-8.
        Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Ok(Some(Line::NotUtf8))
        }
        Err(LinesCodecError::Io(e)) => Err(e),
    }
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        recover(self.inner.decode(buf), self.max)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        recover(self.inner.decode_eof(buf), self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse_command("PING"), Ok(Some(Command::Ping)));
        assert_eq!(parse_command(""), Ok(None));
        assert_eq!(
            parse_command("SUB:fragments"),
            Ok(Some(Command::Sub("fragments")))
        );
        assert_eq!(
            parse_command("UNSUB:fragments"),
            Ok(Some(Command::Unsub("fragments")))
        );
        assert_eq!(
            parse_command("AUTH:s3cret:x"),
            Ok(Some(Command::Auth("s3cret:x")))
        );
        assert_eq!(
            parse_command("PUB:fragments:fragment_5.bin"),
            Ok(Some(Command::Pub {
                topic: "fragments",
                message: "fragment_5.bin"
            }))
        );
        assert_eq!(
            parse_command("PUB:t:a:b::c"),
            Ok(Some(Command::Pub {
                topic: "t",
                message: "a:b::c"
            }))
        );
        assert_eq!(
            parse_command("PUB:t:"),
            Ok(Some(Command::Pub {
                topic: "t",
                message: ""
            }))
        );
    }

    #[test]
    fn refuses_bad_lines() {
        assert_eq!(parse_command("PUB:fragments"), Err(LineError::MissingColon));
        for bad in ["SUB:", "PUB::x", "SUB:a b", "UNSUB:", "SUB:a..b"] {
            assert!(
                matches!(parse_command(bad), Err(LineError::Topic(_))),
                "{bad:?}"
            );
        }
        for bad in ["ping", "HELLO", "SUB", "PUB", "PING ", " SUB:x", "MSG:t:x"] {
            assert_eq!(parse_command(bad), Err(LineError::Unknown), "{bad:?}");
        }
        assert!(LineError::Topic("x".into()).to_string() == "x");
        assert_eq!(&err_line("a\nb")[..], b"ERR:a b\n");
        assert_eq!(&msg_line("t", "a:b")[..], b"MSG:t:a:b\n");
    }

    fn decode_all(codec: &mut LineCodec, input: &[&[u8]]) -> Vec<Line> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input {
            buf.extend_from_slice(piece);
            while let Some(l) = codec.decode(&mut buf).unwrap() {
                out.push(l);
            }
        }
        while let Some(l) = codec.decode_eof(&mut buf).unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn frames_partial_crlf_long_and_binary_lines() {
        let mut c = LineCodec::new(16);
        let t = |s: &str| Line::Text(s.to_string());
        let got = decode_all(
            &mut c,
            &[
                b"SU",
                b"B:a\r",
                b"\nPING\n\n",
                b"x".repeat(40).as_slice(),
                b"\nPUB:a:\xff\xfe\nPING",
            ],
        );
        assert_eq!(
            got,
            vec![
                t("SUB:a"),
                t("PING"),
                t(""),
                Line::TooLong,
                Line::NotUtf8,
                t("PING")
            ]
        );
        // A long line split across many reads is reported once and skipped whole.
        let mut c = LineCodec::new(8);
        let got = decode_all(&mut c, &[b"0123456", b"789abcd", b"efghij\nPING\n"]);
        assert_eq!(got, vec![Line::TooLong, t("PING")]);
        // Exactly the limit is fine, with or without '\r'; one more byte is not.
        let mut c = LineCodec::new(4);
        assert_eq!(
            decode_all(&mut c, &[b"PING\r\nPING\nPINGS\nPING"]),
            vec![t("PING"), t("PING"), Line::TooLong, t("PING")]
        );
    }
}

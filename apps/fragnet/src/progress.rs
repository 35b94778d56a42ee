//! Progress for people: an indicatif bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use fragnet_core::fetch::FetchObserver;
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::store::fragment_file_name;
use fragnet_core::{FragmentIndex, Manifest, PeerAddr, VideoId};
use indicatif::{ProgressBar, ProgressStyle};

/// A byte progress bar that shows only on a terminal.
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Reports a fetch: a bar on a terminal, and one line per fragment received (the
/// original's `[✓] Fragment 'fragment_5.bin' received from ...`).
pub struct FetchProgress {
    bar: Mutex<Option<ProgressBar>>,
    lines: bool,
}

impl FetchProgress {
    /// `lines`: print a line per fragment (always on when there is no terminal).
    pub fn new(lines: bool) -> Self {
        FetchProgress {
            bar: Mutex::new(None),
            lines: lines || !std::io::stderr().is_terminal(),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }

    fn println(&self, line: String) {
        match &*self.bar.lock().unwrap() {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => println!("{line}"),
        }
    }
}

/// The peers a fragment came from, for people.
pub fn sources(from: &[PeerAddr]) -> String {
    from.iter()
        .map(|a| a.host_port())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FetchObserver for FetchProgress {
    fn started(&self, video: VideoId, manifest: &Manifest, wanted: u64, already: u64) {
        let bar = bytes_bar(wanted, &format!("{} ({})", manifest.name, video.short()));
        bar.set_position(already);
        *self.bar.lock().unwrap() = Some(bar);
    }

    fn chunk(&self, _index: FragmentIndex, _chunk: u32, bytes: u64, _from: &PeerAddr) {
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.inc(bytes);
        }
    }

    fn fragment(&self, index: FragmentIndex, bytes: u64, from: &[PeerAddr]) {
        if self.lines {
            self.println(format!(
                "[✓] Fragment '{}' received from {} ({}, verified)",
                fragment_file_name(index),
                sources(from),
                human_bytes(bytes)
            ));
        }
    }

    fn peer_failed(&self, peer: &PeerAddr, error: &str) {
        self.println(format!("[!] {peer}: {error}"));
    }
}

/// `0-4,7` from `[0,1,2,3,4,7]`.
pub fn ranges(v: &[FragmentIndex]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        out.push(if v[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", v[i])
        });
        i += 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress() {
        assert_eq!(ranges(&[0, 1, 2, 3, 4]), "0-4");
        assert_eq!(ranges(&[0, 2, 3, 7]), "0,2-3,7");
        assert_eq!(ranges(&[]), "none");
    }
}

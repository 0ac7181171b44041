//! Progress on stderr: a redrawn status line on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    terminal: bool,
    quiet: bool,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            quiet,
            last_draw: None,
            drawn: false,
        }
    }

    /// A line that stays.
    pub fn line(&mut self, message: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.drawn {
            let _ = write!(err, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(err, "{message}");
    }

    /// A status that the next one replaces (terminal only; at most ten redraws a second).
    pub fn status(&mut self, what: &str, done: u64, total: Option<u64>) {
        if self.quiet || !self.terminal {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        let text = match total {
            Some(total) if total > 0 => format!(
                "{what}: {} / {} ({}%)",
                mib(done),
                mib(total),
                done.saturating_mul(100) / total
            ),
            _ => format!("{what}: {}", mib(done)),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears a status line left on the terminal.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

//! Deterministic, parallel layer compression.
//!
//! The uncompressed stream is cut into fixed-size chunks; each chunk is compressed on its
//! own (a gzip member or a zstd frame) by a small pool of threads, and the results are
//! written in order. Concatenated gzip members are one valid gzip stream (RFC 1952 §2.2),
//! and concatenated zstd frames one valid zstd stream, so the output depends only on the
//! content, the chunk size and the level — never on thread timing or the number of
//! threads. One pinned implementation (libdeflate through `libdeflater`; libzstd through `zstd`)
//! makes it the same on every machine; the golden digests in the tests guard that.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Bytes per independently compressed chunk.
pub const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip { level: u32 },
    Zstd { level: i32 },
}

impl Compression {
    /// libdeflate's level 1 compresses about as well as Go's default (umoci, docker) at
    /// several times the speed; ko and crane default to gzip's fastest level too.
    pub const DEFAULT_GZIP_LEVEL: i32 = 1;
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

    /// Names everything that decides the compressed bytes. Part of the blob cache key, so
    /// changing any of it is a cache miss, never a wrong digest. Bump the implementation
    /// tag when an upgrade of the compressor changes its output (the golden tests fail).
    pub fn id(&self) -> String {
        match self {
            Compression::Gzip { level } => format!("gzip-libdeflate1-l{level}-c{CHUNK}"),
            Compression::Zstd { level } => format!("zstd1.5-l{level}-c{CHUNK}"),
        }
    }

    pub fn media_type(&self) -> oci::MediaType {
        match self {
            Compression::Gzip { .. } => oci::MediaType::ImageLayerGzip,
            Compression::Zstd { .. } => oci::MediaType::ImageLayerZstd,
        }
    }

    /// Compresses one chunk into a self-contained member/frame. `scratch` is the calling
    /// thread's, kept across chunks: one compressor and one worst-case output buffer per
    /// thread rather than a fresh (zeroed, page-faulted) megabyte per chunk.
    fn compress_chunk(&self, chunk: &[u8], scratch: &mut Scratch) -> io::Result<Vec<u8>> {
        match *self {
            Compression::Gzip { level } => {
                let compressor = match &mut scratch.deflate {
                    Some(compressor) => compressor,
                    slot @ None => {
                        let level =
                            libdeflater::CompressionLvl::new(level as i32).map_err(|_| {
                                io::Error::other(format!("gzip level {level} out of range"))
                            })?;
                        slot.insert(libdeflater::Compressor::new(level))
                    }
                };
                let bound = compressor.deflate_compress_bound(chunk.len());
                if scratch.out.len() < bound {
                    scratch.out.resize(bound, 0);
                }
                let len = compressor
                    .deflate_compress(chunk, &mut scratch.out[..bound])
                    .map_err(|e| io::Error::other(format!("deflate failed: {e:?}")))?;
                let mut out = Vec::with_capacity(10 + len + 8);
                // Header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
                out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
                out.extend_from_slice(&scratch.out[..len]);
                out.extend_from_slice(&libdeflater::crc32(chunk).to_le_bytes());
                out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
                Ok(out)
            }
            Compression::Zstd { level } => {
                let mut out = Vec::with_capacity(chunk.len() / 2 + 64);
                let mut encoder = zstd::stream::write::Encoder::new(&mut out, level)?;
                encoder.include_checksum(true)?;
                encoder.include_contentsize(true)?;
                encoder.set_pledged_src_size(Some(chunk.len() as u64))?;
                encoder.write_all(chunk)?;
                encoder.finish()?;
                Ok(out)
            }
        }
    }
}

/// A compression thread's reusable state (one compression setting per compressor).
#[derive(Default)]
struct Scratch {
    deflate: Option<libdeflater::Compressor>,
    out: Vec<u8>,
}

type Job = (u64, Vec<u8>);
/// The compressed chunk, and the input buffer back for reuse.
type Done = (u64, io::Result<Vec<u8>>, Vec<u8>);

/// A `Write` that compresses in parallel into `out`, in order.
pub struct ParallelCompressor<W: Write> {
    out: W,
    compression: Compression,
    buffer: Vec<u8>,
    next_seq: u64,
    next_write: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    /// Input buffers the threads are done with, for the next chunks.
    spare: Vec<Vec<u8>>,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    wrote_any: bool,
}

impl<W: Write> ParallelCompressor<W> {
    pub fn new(out: W, compression: Compression, threads: usize) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = sync_channel::<Done>(threads * 4);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    let mut scratch = Scratch::default();
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((seq, mut chunk)) = job else { return };
                        let result = compression.compress_chunk(&chunk, &mut scratch);
                        chunk.clear();
                        if done_tx.send((seq, result, chunk)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ParallelCompressor {
            out,
            compression,
            buffer: Vec::with_capacity(CHUNK),
            next_seq: 0,
            next_write: 0,
            pending: BTreeMap::new(),
            spare: Vec::new(),
            in_flight: 0,
            max_in_flight: threads * 3,
            jobs: Some(job_tx),
            done: done_rx,
            workers,
            wrote_any: false,
        }
    }

    /// The default number of compression threads: the machine's cores, at most 8.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    }

    fn submit(&mut self) -> io::Result<()> {
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.buffer, next);
        while self.in_flight >= self.max_in_flight {
            self.receive_one()?;
        }
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compressor already finished"))?;
        jobs.send((self.next_seq, chunk))
            .map_err(|_| io::Error::other("compression thread died"))?;
        self.next_seq += 1;
        self.in_flight += 1;
        self.wrote_any = true;
        Ok(())
    }

    fn receive_one(&mut self) -> io::Result<()> {
        let (seq, result, buffer) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("compression thread died"))?;
        self.in_flight -= 1;
        if buffer.capacity() >= CHUNK {
            self.spare.push(buffer);
        }
        self.pending.insert(seq, result?);
        while let Some(bytes) = self.pending.remove(&self.next_write) {
            self.out.write_all(&bytes)?;
            self.next_write += 1;
        }
        Ok(())
    }

    /// Compresses what is buffered, waits for the workers and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buffer.is_empty() || !self.wrote_any {
            // An empty input still makes one (empty) member, a valid stream.
            self.submit()?;
        }
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        self.out.flush()?;
        Ok(self.out)
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }
}

impl<W: Write> Write for ParallelCompressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = room.min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == CHUNK {
            self.submit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunk boundaries must not depend on when callers flush: only the output is flushed.
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::io::Read;

    fn compress(data: &[u8], compression: Compression, threads: usize, step: usize) -> Vec<u8> {
        let mut c = ParallelCompressor::new(Vec::new(), compression, threads);
        for piece in data.chunks(step.max(1)) {
            c.write_all(piece).expect("test");
        }
        c.finish().expect("test")
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter rendered as text.
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("line {i} {}\n", i * 2654435761 % 1000).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn gzip_output_independent_of_threads_and_write_sizes() {
        let data = sample(CHUNK * 3 + 12345);
        let gz = Compression::Gzip { level: 6 };
        let one = compress(&data, gz, 1, 7777);
        let many = compress(&data, gz, 4, 1 << 16);
        let odd = compress(&data, gz, 3, CHUNK + 1);
        assert_eq!(one, many);
        assert_eq!(one, odd);
        // Four members, and a standard multi-member decoder reads the whole stream back.
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .expect("test");
        assert_eq!(back, data);
        let members = one.windows(4).filter(|w| *w == [0x1f, 0x8b, 8, 0]).count();
        assert!(members >= 4, "{members} members");
    }

    #[test]
    fn zstd_frames_round_trip() {
        let data = sample(CHUNK * 2 + 99);
        let z = Compression::Zstd { level: 3 };
        let a = compress(&data, z, 1, 4096);
        let b = compress(&data, z, 2, 1 << 20);
        assert_eq!(a, b);
        assert_eq!(zstd::stream::decode_all(&a[..]).expect("test"), data);
    }

    #[test]
    fn empty_input_is_a_valid_stream() {
        let gz = compress(&[], Compression::Gzip { level: 6 }, 2, 1);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .expect("test");
        assert!(back.is_empty());
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    }

    /// Pins the compressors' output: if an upgrade changes these, bump `Compression::id`
    /// (layer digests change with it) and update the digests.
    #[test]
    fn golden_digests() {
        let data = sample(CHUNK + 4321);
        let gz = compress(&data, Compression::Gzip { level: 6 }, 2, 65536);
        let zs = compress(&data, Compression::Zstd { level: 3 }, 2, 65536);
        expect_test::expect![[r#"
            sha256:605ffc30e881948e239bb76de0817149dc692dcaf9a25e1af57f8d0cf446fbd8
            sha256:59b2fe6e2262ed264e8df429d4e9114d8f2a40948b53a46611886122e2d68c72"#]]
        .assert_eq(&format!("{}\n{}", Digest::of(&gz), Digest::of(&zs)));
    }
}

//! A Kafka producer written against the wire protocol, for records no client library will
//! send: rdkafka takes header names as `&str`, so a name that is not UTF-8 (which the
//! protocol and brokers allow) can only be sent by encoding the request by hand.
//!
//! One Produce request, version 3 (the first that carries record batches of magic 2, the
//! format with headers), to one partition of a broker that leads it, acks from all replicas.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// One record to send: key, value and headers, all raw bytes.
pub struct RawRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a [u8], &'a [u8])],
}

/// Sends `records` as one record batch to `topic`'s `partition` on `broker` (host:port) and
/// returns the offset the broker gave the first, or the broker's error code.
pub fn produce(
    broker: &str,
    topic: &str,
    partition: i32,
    records: &[RawRecord<'_>],
) -> Result<i64, String> {
    let batch = record_batch(records);
    let mut body = Vec::new();
    put_i16(&mut body, 0); // api key: Produce
    put_i16(&mut body, 3); // api version
    put_i32(&mut body, 1); // correlation id
    put_str(&mut body, "tidewatch-raw-producer"); // client id
    put_i16(&mut body, -1); // transactional id: null
    put_i16(&mut body, -1); // acks: all
    put_i32(&mut body, 10_000); // timeout, ms
    put_i32(&mut body, 1); // topics
    put_str(&mut body, topic);
    put_i32(&mut body, 1); // partitions
    put_i32(&mut body, partition);
    put_i32(&mut body, len_i32(batch.len()));
    body.extend_from_slice(&batch);

    let mut stream = TcpStream::connect(broker).map_err(|e| format!("connect {broker}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    put_i32(&mut frame, len_i32(body.len()));
    frame.extend_from_slice(&body);
    stream.write_all(&frame).map_err(|e| format!("send: {e}"))?;

    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .map_err(|e| format!("read: {e}"))?;
    let mut response =
        vec![0u8; usize::try_from(i32::from_be_bytes(size)).map_err(|e| e.to_string())?];
    stream
        .read_exact(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    // correlation id, topics (1), name, partitions (1), index, error code, base offset, ...
    let mut r = Reader(&response);
    let correlation = r.i32()?;
    if correlation != 1 {
        return Err(format!("correlation id {correlation}, sent 1"));
    }
    let (topics, name) = (r.i32()?, r.string()?);
    let (partitions, index, error, offset) = (r.i32()?, r.i32()?, r.i16()?, r.i64()?);
    if (topics, name.as_str(), partitions, index) != (1, topic, 1, partition) {
        return Err(format!(
            "answer for {topics} topic(s), {name:?}, {partitions} partition(s), partition {index}"
        ));
    }
    if error != 0 {
        return Err(format!("broker error code {error}"));
    }
    Ok(offset)
}

/// A record batch of magic 2 (the format since Kafka 0.11), uncompressed, with no producer id.
fn record_batch(records: &[RawRecord<'_>]) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    // From attributes to the end: what the CRC covers.
    let mut tail = Vec::new();
    put_i16(&mut tail, 0); // attributes: no compression, create time
    put_i32(&mut tail, len_i32(records.len()) - 1); // last offset delta
    put_i64(&mut tail, now); // base timestamp
    put_i64(&mut tail, now); // max timestamp
    put_i64(&mut tail, -1); // producer id
    put_i16(&mut tail, -1); // producer epoch
    put_i32(&mut tail, -1); // base sequence
    put_i32(&mut tail, len_i32(records.len()));
    for (delta, record) in records.iter().enumerate() {
        let mut r = Vec::new();
        r.push(0); // attributes
        put_varint(&mut r, 0); // timestamp delta
        put_varint(&mut r, i64::try_from(delta).expect("few records"));
        match record.key {
            Some(key) => put_bytes(&mut r, key),
            None => put_varint(&mut r, -1),
        }
        put_bytes(&mut r, record.value);
        put_varint(
            &mut r,
            i64::try_from(record.headers.len()).expect("few headers"),
        );
        for (name, value) in record.headers {
            put_bytes(&mut r, name);
            put_bytes(&mut r, value);
        }
        put_varint(&mut tail, i64::try_from(r.len()).expect("small record"));
        tail.extend_from_slice(&r);
    }
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&tail);

    let mut batch = Vec::new();
    put_i64(&mut batch, 0); // base offset (the broker assigns it)
                            // batch length: everything after this field
    put_i32(&mut batch, len_i32(4 + 1 + 4 + tail.len()));
    put_i32(&mut batch, -1); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc.to_be_bytes());
    batch.extend_from_slice(&tail);
    batch
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).expect("a test record batch is small")
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_i16(out, i16::try_from(s.len()).expect("short string"));
    out.extend_from_slice(s.as_bytes());
}

/// A zig-zag varint, as record fields are written.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, i64::try_from(b.len()).expect("small field"));
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("response ended early".into());
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("N bytes"))
    }
    fn i16(&mut self) -> Result<i16, String> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.take().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.take().map(i64::from_be_bytes)
    }
    fn string(&mut self) -> Result<String, String> {
        let n = usize::try_from(self.i16()?).map_err(|_| "null string".to_owned())?;
        if self.0.len() < n {
            return Err("response ended early".into());
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
}

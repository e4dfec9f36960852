//! Cost of reading session ids from JSON request bodies, next to parsing the same body
//! into a `serde_json::Value` in the same run, and of finding a response id.
//!
//! Run: `cargo bench --bench body_scan` (about 2 minutes). See `BENCHMARKS.md`.
//!
//! Bodies (generated, deterministic), each with its session field at the very end, so
//! the scanner has to cross the whole body:
//!
//! - `messages/<size>`: an Anthropic Messages request as Claude Code sends it: a long
//!   `messages` array of user / assistant turns with text, `tool_use` and `tool_result`
//!   blocks (source code with `\n` and `\"` escapes), `metadata.user_id` last.
//! - `input/<size>`: a Responses API request as Codex sends it: `input` items with
//!   messages, function calls and outputs, reasoning items with long base64
//!   `encrypted_content`, `prompt_cache_key` last.
//! - `small_turns/<size>`: many tiny messages (`{"role":"user","content":"ok"}`): the
//!   most structure per byte, the worst case for the scanner.
//!
//! For each: `scan` is [`BodySignals::from_json`] (the middleware's scan, validation and
//! extension built), `dom` is `serde_json::from_slice::<serde_json::Value>`. Throughput is
//! reported per byte, so criterion prints MiB/s; the ratio of the two in one run is the
//! figure that matters on a noisy machine.
//!
//! `response_id/*`: [`find_response_id`] on the first SSE event of a Responses stream
//! (`response.created`, which repeats instructions and tools: 6 KiB here) and on a JSON
//! response body, next to `memchr` finding the first `\n\n` in the same bytes (the least
//! any SSE reader does).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tower_sticky_session::body_session::{BodySignals, ResponseIdScan, find_response_id};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Deterministic filler text: source-code-like lines with quotes and newlines.
fn code(seed: usize, len: usize) -> String {
    let mut s = String::with_capacity(len + 64);
    let mut i = seed;
    while s.len() < len {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        match (i >> 33) % 4 {
            0 => s.push_str("    let value = map.get(\"key\").unwrap_or(&default);\n"),
            1 => s.push_str("fn handle(req: Request<Body>) -> Result<Response, Error> {\n"),
            2 => s.push_str("    // Résumé: the parser handles UTF-8 — and \t tabs.\n"),
            _ => s.push_str("        println!(\"{}: {:?}\", name, item);\n"),
        }
    }
    s
}

fn base64ish(seed: usize, len: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = seed as u64;
    (0..len)
        .map(|_| {
            i = i.wrapping_mul(6364136223846793005).wrapping_add(1);
            A[(i >> 58) as usize] as char
        })
        .collect()
}

/// A Claude Code style Messages request of about `size` bytes, metadata last.
fn messages_body(size: usize) -> Vec<u8> {
    let mut messages = Vec::new();
    let mut total = 0;
    let mut n = 0;
    while total < size {
        let m = match n % 4 {
            0 => json!({"role": "user", "content": [{"type": "text", "text": code(n, 600)}]}),
            1 => json!({"role": "assistant", "content": [
                {"type": "text", "text": "Let me look at that file."},
                {"type": "tool_use", "id": format!("toolu_{n:08}"), "name": "Read",
                 "input": {"file_path": "/home/dev/project/src/main.rs", "limit": 200}}]}),
            2 => json!({"role": "user", "content": [{"type": "tool_result",
                 "tool_use_id": format!("toolu_{:08}", n - 1), "content": code(n, 6000)}]}),
            _ => json!({"role": "assistant", "content": [{"type": "text", "text": code(n, 900)}]}),
        };
        total += m.to_string().len() + 1;
        messages.push(m);
        n += 1;
    }
    serde_json::to_vec(&json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."}],
        "messages": messages,
        "tools": [{"name": "Read", "description": "Reads a file", "input_schema": {"type": "object"}}],
        "stream": true,
        "metadata": {"user_id": "user_5d41402abc4b2a76_account_b2c3d4e5_session_0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}
    }))
    .unwrap()
}

/// A Codex style Responses request of about `size` bytes, prompt_cache_key last.
fn input_body(size: usize) -> Vec<u8> {
    let mut input = Vec::new();
    let mut total = 0;
    let mut n = 0;
    while total < size {
        let item = match n % 4 {
            0 => json!({"type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": code(n, 400)}]}),
            1 => json!({"type": "reasoning", "summary": [], "content": null,
                        "encrypted_content": base64ish(n, 3000)}),
            2 => json!({"type": "function_call", "name": "shell", "call_id": format!("call_{n}"),
                        "arguments": "{\"command\":[\"rg\",\"-n\",\"fn main\"]}"}),
            _ => json!({"type": "function_call_output", "call_id": format!("call_{}", n - 1),
                        "output": code(n, 5000)}),
        };
        total += item.to_string().len() + 1;
        input.push(item);
        n += 1;
    }
    serde_json::to_vec(&json!({
        "model": "gpt-5.1-codex",
        "instructions": "You are Codex, based on GPT-5.",
        "input": input,
        "tools": [],
        "store": false,
        "stream": true,
        "prompt_cache_key": "019a6f1e-3c2b-7a40-9d55-8e1f2a3b4c5d"
    }))
    .unwrap()
}

/// Many tiny messages: the most structure per byte.
fn small_turns_body(size: usize) -> Vec<u8> {
    let turns = size / 33;
    let messages: Vec<_> = (0..turns)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "ok"}))
        .collect();
    serde_json::to_vec(&json!({"model": "m", "messages": messages, "prompt_cache_key": "pck-1"}))
        .unwrap()
}

fn bodies(c: &mut Criterion) {
    type Make = fn(usize) -> Vec<u8>;
    let shapes: [(&str, Make); 3] = [
        ("messages", messages_body),
        ("input", input_body),
        ("small_turns", small_turns_body),
    ];
    for (name, make) in shapes {
        let mut group = c.benchmark_group(format!("body/{name}"));
        for size in [64 * KIB, MIB, 8 * MIB] {
            let body = make(size);
            // The scan must find the field at the end (and agree with serde_json).
            let found = BodySignals::from_json(&body).unwrap().session.unwrap();
            assert!(!found.id.as_str().is_empty());
            serde_json::from_slice::<serde_json::Value>(&body).unwrap();
            group.throughput(Throughput::Bytes(body.len() as u64));
            let label = if size >= MIB {
                format!("{}MiB", size / MIB)
            } else {
                format!("{}KiB", size / KIB)
            };
            group.bench_with_input(BenchmarkId::new("scan", &label), &body, |b, body| {
                b.iter(|| BodySignals::from_json(black_box(body)).unwrap())
            });
            group.bench_with_input(BenchmarkId::new("dom", &label), &body, |b, body| {
                b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap())
            });
        }
        group.finish();
    }
}

fn response_ids(c: &mut Criterion) {
    let created = format!(
        "event: response.created\ndata: {}\n\n",
        json!({
            "type": "response.created",
            "sequence_number": 0,
            "response": {
                "id": "resp_68af4c1e2b3c8190a1b2c3d4e5f607180a1b2c3d4e5f6071",
                "object": "response",
                "created_at": 1764600000,
                "status": "in_progress",
                "instructions": code(1, 4000),
                "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}],
                "model": "gpt-5.1-codex",
                "output": [],
                "usage": null
            }
        })
    );
    let json_body = serde_json::to_vec(&json!({
        "id": "resp_68af4c1e2b3c8190a1b2c3d4e5f607180a1b2c3d4e5f6071",
        "object": "response",
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": code(2, 2000)}]}]
    }))
    .unwrap();
    let mut group = c.benchmark_group("response_id");
    assert!(matches!(
        find_response_id(created.as_bytes()),
        ResponseIdScan::Found(_)
    ));
    assert!(matches!(
        find_response_id(&json_body),
        ResponseIdScan::Found(_)
    ));
    group.bench_function("sse_response_created", |b| {
        b.iter(|| find_response_id(black_box(created.as_bytes())))
    });
    group.bench_function("json_body", |b| {
        b.iter(|| find_response_id(black_box(&json_body)))
    });
    group.bench_function("baseline_memmem_event_end", |b| {
        b.iter(|| memchr::memmem::find(black_box(created.as_bytes()), b"\n\n"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bodies, response_ids
}
criterion_main!(benches);

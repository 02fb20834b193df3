//! Scale-out: several gateways sharing limits through a real Redis, and several Ollama
//! backends behind one gateway (routing by model, spreading load, surviving a dead backend).
//! `scripts/test.sh` installs Debian's redis-server; without it these tests fail, not skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn redis_policy(redis: &Redis, max: u32, failure: &str) -> String {
    format!(
        r#"
ollama_api: "{{OLLAMA}}"
whitelist: {{enabled: false}}
auth: {{enabled: true, keys: [{{id: shared, key: "shared-key-000"}}]}}
rate_limit:
  enabled: true
  max_requests: {max}
  window_seconds: 60
  backend: redis
  redis_url: "{}"
  redis_timeout_ms: 200
  redis_failure: {failure}
"#,
        redis.url()
    )
}

fn ask(gw: &Gateway) -> Response {
    gw.chat("shared-key-000", &hello("qwen3:32b"))
}

#[test]
fn two_gateways_sharing_redis_admit_exactly_thirty_of_a_hundred() {
    let redis = Redis::start();
    let fake = Fake::start(&["--workers", "2"]);
    let policy = redis_policy(&redis, 30, "open");
    let gws = [
        Gateway::start(&policy, &fake.url()),
        Gateway::start(&policy, &fake.url()),
    ];
    let addrs = [gws[0].addr, gws[1].addr];
    let rs = burst(
        &addrs,
        100,
        "shared-key-000",
        &hello("qwen3:32b").to_string(),
    );
    let ok = rs.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        30,
        "{:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(rs.iter().filter(|r| r.status == 429).count(), 70);
    for r in rs.iter().filter(|r| r.status == 429) {
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    }
    assert!(
        rs.iter()
            .filter(|r| r.status == 200)
            .all(|r| r.header("x-ratelimit-limit-requests") == Some("30"))
    );
    assert_eq!(fake.chat_requests(), 30);
}

#[test]
fn redis_outage_fails_open_and_recovers_without_restart() {
    let mut redis = Redis::start();
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&redis_policy(&redis, 5, "open"), &fake.url());
    for _ in 0..5 {
        assert_eq!(ask(&gw).status, 200);
    }
    assert_eq!(ask(&gw).status, 429);

    redis.down();
    for _ in 0..5 {
        let t = Instant::now();
        let r = ask(&gw);
        assert_eq!(r.status, 200, "fail open admits: {}", r.text());
        assert!(
            r.header("x-ratelimit-limit-requests").is_none(),
            "no limit was checked"
        );
        assert!(
            t.elapsed() < Duration::from_millis(800),
            "bounded by the Redis timeout"
        );
    }
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(
        m.contains("qwen_gateway_ratelimit_backend_errors_total{result=\"fail_open\"}"),
        "{m}"
    );

    // Redis is back (empty): limits are exact again, without a restart.
    redis.up();
    wait_for(
        Duration::from_secs(10),
        "the limiter to use Redis again",
        || {
            let r = ask(&gw);
            (r.header("x-ratelimit-limit-requests") == Some("5")).then_some(())
        },
    );
    let mut admitted = 1;
    loop {
        let r = ask(&gw);
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 200);
        admitted += 1;
        assert!(admitted <= 5, "over the limit after recovery");
    }
    assert_eq!(admitted, 5);
}

#[test]
fn redis_outage_fails_closed_when_the_policy_says_so() {
    let mut redis = Redis::start();
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&redis_policy(&redis, 5, "closed"), &fake.url());
    assert_eq!(ask(&gw).status, 200);
    redis.down();
    let before = fake.chat_requests();
    let r = ask(&gw);
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["error"]["code"], "rate_limiter_unavailable");
    assert_no_internals(&r.text(), &redis.url());
    assert_eq!(fake.chat_requests(), before);
}

#[test]
fn switching_the_limit_backend_applies_on_reload() {
    let redis = Redis::start();
    let fake = Fake::start(&[]);
    let memory = "ollama_api: \"{OLLAMA}\"\nwhitelist: {enabled: false}\nauth: {enabled: true, keys: [{id: shared, key: \"shared-key-000\"}]}\nrate_limit: {enabled: true, max_requests: 2, window_seconds: 60}\n";
    let gw = Gateway::start(memory, &fake.url());
    assert_eq!(ask(&gw).status, 200);
    assert_eq!(ask(&gw).status, 200);
    assert_eq!(ask(&gw).status, 429);
    std::fs::write(
        &gw.policy_path,
        Gateway::render(
            &redis_policy(&redis, 2, "closed"),
            &fake.url(),
            gw.dir.path(),
        ),
    )
    .unwrap();
    // Redis holds no count for this key yet: the switch shows as admissions again.
    wait_for(Duration::from_secs(5), "the Redis backend", || {
        (ask(&gw).status == 200).then_some(())
    });
    assert_eq!(ask(&gw).status, 200);
    assert_eq!(ask(&gw).status, 429);
}

// ---- several Ollama backends ----

fn backends_policy(fakes: &[&Fake]) -> String {
    let list: Vec<String> = fakes
        .iter()
        .map(|f| format!("{{url: \"{}\"}}", f.url()))
        .collect();
    format!(
        "backends: [{}]\nwhitelist: {{enabled: false}}\nrate_limit: {{enabled: false}}\nauth: {{enabled: true, keys: [{{id: shared, key: \"shared-key-000\"}}]}}\n\
         upstream: {{timeout_seconds: 0.5, model_refresh_seconds: 0.3, breaker: {{failure_threshold: 2, cooldown_seconds: 1}}}}\n",
        list.join(", ")
    )
}

fn readyz(gw: &Gateway) -> serde_json::Value {
    request(gw.addr, "GET", "/readyz", &[], None).json()
}

#[test]
fn load_spreads_and_models_route_to_the_backend_that_has_them() {
    let a = Fake::start(&["--models", "qwen3:32b"]);
    let b = Fake::start(&["--models", "qwen3:32b,llama3.2:latest"]);
    let gw = Gateway::start(&backends_policy(&[&a, &b]), "unused");
    wait_for(Duration::from_secs(5), "model lists", || {
        let r = readyz(&gw);
        r["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["models"].as_i64() > Some(0))
            .then_some(())
    });
    // Twenty conversations (one conversation would stay on one backend).
    for i in 0..20 {
        let body = json!({"model": "qwen3:32b",
            "messages": [{"role": "user", "content": format!("hello {i}")}]});
        assert_eq!(gw.chat("shared-key-000", &body).status, 200);
    }
    let (na, nb) = (a.chat_requests(), b.chat_requests());
    assert_eq!(na + nb, 20);
    assert!(na >= 5 && nb >= 5, "load not spread: {na} / {nb}");

    for _ in 0..10 {
        let r = gw.chat("shared-key-000", &hello("llama3.2:latest"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["model"], "llama3.2:latest");
    }
    assert_eq!(
        a.chat_requests(),
        na,
        "a backend without the model got a request for it"
    );
    assert_eq!(b.chat_requests(), nb + 10);
    // /v1/models is the union.
    let r = request(
        gw.addr,
        "GET",
        "/v1/models",
        &[("X-Api-Key", "shared-key-000")],
        None,
    );
    let ids = r.model_ids();
    assert_eq!(ids, vec!["llama3.2:latest", "qwen3:32b"]);
}

/// Warm before cold (issue 21): of two backends that serve the model, the one that has it in
/// memory (its /api/ps) gets the requests, instead of one that would first load it; /readyz
/// says which backend has what loaded.
#[test]
fn requests_go_to_the_backend_with_the_model_in_memory() {
    let cold = Fake::start(&["--models", "qwen3:32b", "--loaded", ""]);
    let warm = Fake::start(&["--models", "qwen3:32b", "--loaded", "qwen3:32b"]);
    let gw = Gateway::start(&backends_policy(&[&cold, &warm]), "unused");
    wait_for(Duration::from_secs(5), "loaded models", || {
        let r = readyz(&gw);
        let b = r["backends"].as_array().cloned().unwrap_or_default();
        (b.len() == 2
            && b.iter().all(|b| b["models"].as_i64() > Some(0))
            && b[1]["loaded"] == serde_json::json!(["qwen3:32b"])
            && b[0]["loaded"] == serde_json::json!([]))
        .then_some(())
    });
    // Ten conversations: each goes where its model is warm.
    for i in 0..10 {
        let body = json!({"model": "qwen3:32b",
            "messages": [{"role": "user", "content": format!("hello {i}")}]});
        assert_eq!(gw.chat("shared-key-000", &body).status, 200);
    }
    assert_eq!((cold.chat_requests(), warm.chat_requests()), (0, 10));
    // The metric says why.
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(
        m.contains("qwen_gateway_backend_choice_total{reason=\"warm\"} 10"),
        "{m}"
    );
}

/// Conversation affinity (issue 21): each turn of a conversation (the same system prompt and
/// first message, growing) goes to the backend that served the previous one, whose cache holds
/// its prompt, on the native and the OpenAI route alike; without it the two backends would
/// take turns.
#[test]
fn a_conversation_stays_on_its_backend() {
    let a = Fake::start(&["--models", "qwen3:32b"]);
    let b = Fake::start(&["--models", "qwen3:32b"]);
    let gw = Gateway::start(&backends_policy(&[&a, &b]), "unused");
    wait_for(Duration::from_secs(5), "model lists", || {
        readyz(&gw)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["models"].as_i64() > Some(0))
            .then_some(())
    });
    for path in ["/api/chat", "/v1/chat/completions"] {
        let (a0, b0) = (a.chat_requests(), b.chat_requests());
        let mut messages = vec![
            serde_json::json!({"role": "system", "content": format!("You are the agent of {path}.")}),
            serde_json::json!({"role": "user", "content": "first question"}),
        ];
        for turn in 0..8 {
            let body =
                serde_json::json!({"model": "qwen3:32b", "stream": false, "messages": messages});
            let r = request(
                gw.addr,
                "POST",
                path,
                &[("X-Api-Key", "shared-key-000")],
                Some(body.to_string().as_bytes()),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            messages.push(
                serde_json::json!({"role": "assistant", "content": format!("answer {turn}")}),
            );
            messages
                .push(serde_json::json!({"role": "user", "content": format!("question {turn}")}));
        }
        let (na, nb) = (a.chat_requests() - a0, b.chat_requests() - b0);
        assert!(
            (na, nb) == (8, 0) || (na, nb) == (0, 8),
            "{path}: the conversation moved between backends: {na} / {nb}"
        );
    }
    // Every turn after each conversation's first went by affinity.
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(
        m.contains("qwen_gateway_backend_choice_total{reason=\"affinity\"} 14"),
        "{m}"
    );
}

#[test]
fn a_killed_backend_costs_no_client_an_error_and_comes_back() {
    let mut a = Fake::start(&[]);
    let b = Fake::start(&[]);
    let a_addr = a.addr.to_string();
    let gw = Gateway::start(&backends_policy(&[&a, &b]), "unused");
    for i in 0..40 {
        if i == 10 {
            a.kill();
        }
        for stream in [false, true] {
            // A new conversation each time (one conversation would stay on one backend).
            let r = gw.chat("shared-key-000", &json!({"model":"qwen3:32b","stream":stream,"messages":[{"role":"user","content":format!("hi {i} {stream}")}]}));
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
            if stream {
                assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
            }
        }
    }
    let r = readyz(&gw);
    let dead = r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["url"] == format!("http://{a_addr}"))
        .unwrap()
        .clone();
    assert_eq!(dead["reachable"], false, "{r}");
    assert_eq!(r["status"], "ready", "one backend is enough to be ready");
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(
        m.contains(&format!(
            "qwen_gateway_backend_breaker_state{{backend=\"http://{a_addr}\"}} 1"
        )),
        "{m}"
    );

    // The backend comes back on its old address and gets traffic again after the cool-down.
    let back = Fake::start_at(&a_addr, &[]);
    let mut n = 0;
    wait_for(
        Duration::from_secs(10),
        "traffic to return to the revived backend",
        || {
            n += 1;
            let r = gw.chat(
                "shared-key-000",
                &json!({"model":"qwen3:32b","messages":[{"role":"user","content":format!("again {n}")}]}),
            );
            assert_eq!(r.status, 200);
            (back.chat_requests() > 0).then_some(())
        },
    );
}

#[test]
fn two_gateways_share_a_token_quota_through_redis() {
    let redis = Redis::start();
    let fake = Fake::start(&["--workers", "2"]);
    let policy = format!(
        "{}limits: {{max_output_tokens: 50}}\ntoken_limit: {{tokens_per_minute: 400}}\n",
        redis_policy(&redis, 100_000, "closed")
    );
    let g1 = Gateway::start(&policy, &fake.url());
    let g2 = Gateway::start(&policy, &fake.url());
    // Each request reserves 54 tokens (11 prompt characters / 3, plus the output cap 50).
    let r1 = ask(&g1);
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(r1.header("x-ratelimit-remaining-tokens"), Some("346"));
    // The other gateway sees the first one's use (settled to its real count, or, if the
    // settlement has not landed yet, still the estimate).
    let r2 = ask(&g2);
    let real1 = r1.json()["usage"]["total_tokens"].as_u64().unwrap();
    let settled = (400 - real1 - 54).to_string();
    let remaining = r2
        .header("x-ratelimit-remaining-tokens")
        .unwrap_or("")
        .to_owned();
    assert!(
        remaining == settled || remaining == "292",
        "remaining {remaining}"
    );
    // Thirty slow requests at once across both gateways: their reservations are all held
    // together, so one shared quota admits at most (400 - used) / 54 of them (two separate
    // quotas would admit about twice as many).
    let slow = hello("test/slow-first:400").to_string();
    let rs = burst(&[g1.addr, g2.addr], 30, "shared-key-000", &slow);
    let admitted = rs.iter().filter(|r| r.status == 200).count();
    assert!((1..=7).contains(&admitted), "{admitted} admitted");
    for r in rs.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "token_limit_exceeded");
    }
}

/// Two gateways sharing one Redis in front of one Ollama: its `max_in_flight` holds for the
/// pair (issue 21). `slow` adds the per-gateway settings after the shared ones.
fn fleet_policy(redis: &Redis, max_in_flight: usize, extra: &str) -> String {
    format!(
        r#"
ollama_api: "{{OLLAMA}}"
whitelist: {{enabled: false}}
auth: {{enabled: true, keys: [{{id: shared, key: "shared-key-000"}}, {{id: heavy, key: "heavy-key-0000"}}, {{id: light, key: "light-key-0000"}}]}}
rate_limit: {{enabled: true, max_requests: 100000, window_seconds: 60, backend: redis, redis_url: "{}", redis_timeout_ms: 200}}
upstream: {{max_in_flight: {max_in_flight}, slot_lease_seconds: 2}}
queue: {{max_wait_seconds: 20}}
{extra}"#,
        redis.url()
    )
}

/// A streamed chat whose answer takes ~300 ms with `--chunk-delay-ms 100`.
fn slow_chat() -> String {
    json!({"model":"qwen3:32b","stream":true,"messages":[{"role":"user","content":"hello"}]})
        .to_string()
}

/// Waits until the gateway's /readyz says `n` gateways share its slots.
fn wait_for_gateways(gw: &Gateway, n: u64) {
    wait_for(Duration::from_secs(15), "the gateways' heartbeat", || {
        let r = request(gw.addr, "GET", "/readyz", &[], None);
        (r.json()["shared_slots"]["gateways"].as_u64() == Some(n)).then_some(())
    });
}

#[test]
fn a_backends_slots_are_counted_across_gateways() {
    let redis = Redis::start();
    // Each answer takes ~300 ms (three chunks, 100 ms apart).
    let fake = Fake::start(&["--workers", "4", "--chunk-delay-ms", "100"]);
    let policy = fleet_policy(&redis, 2, "");
    let g1 = Gateway::start(&policy, &fake.url());
    let g2 = Gateway::start(&policy, &fake.url());
    let rs = burst(&[g1.addr, g2.addr], 12, "shared-key-000", &slow_chat());
    for r in &rs {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each gateway alone would have let 2 through: 4 at once. Together they keep to 2.
    let most = fake.stats()["max_active"].as_i64().unwrap();
    assert_eq!(most, 2, "the host had {most} requests at once");
}

#[test]
fn a_dead_gateways_slots_are_free_again_within_the_lease() {
    let redis = Redis::start();
    let fake = Fake::start(&["--workers", "4"]);
    let policy = fleet_policy(&redis, 2, "");
    let mut g1 = Gateway::start(&policy, &fake.url());
    let g2 = Gateway::start(&policy, &fake.url());
    // Two endless streams through the first gateway hold both slots.
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let addr = g1.addr;
            std::thread::spawn(move || {
                let body = json!({"model":"test/forever:200","stream":true,
                    "messages":[{"role":"user","content":"hold"}]})
                .to_string();
                request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("X-Api-Key", "shared-key-000")],
                    Some(body.as_bytes()),
                )
            })
        })
        .collect();
    wait_for(Duration::from_secs(10), "both slots held", || {
        (fake.stats()["active_chats"].as_i64() == Some(2)).then_some(())
    });
    // The second gateway's request waits for a slot...
    let g2_addr = g2.addr;
    let waiting = std::thread::spawn(move || {
        let r = request(
            g2_addr,
            "POST",
            "/v1/chat/completions",
            &[("X-Api-Key", "shared-key-000")],
            Some(hello("qwen3:32b").to_string().as_bytes()),
        );
        (r, Instant::now())
    });
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        assert!(
            !waiting.is_finished(),
            "the request went through while both slots were held by the other gateway"
        );
        std::thread::yield_now();
    }
    // ...until the gateway that holds them dies without a word: its leases are not renewed
    // and expire (2 s), and the waiting request gets one.
    let killed = Instant::now();
    let _ = g1.child.kill();
    let _ = g1.child.wait();
    let (r, done) = waiting.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let took = done.duration_since(killed);
    assert!(
        took < Duration::from_millis(3500),
        "slots freed after {took:?}"
    );
    for s in streams {
        let _ = s.join();
    }
}

#[test]
fn with_redis_down_each_gateway_keeps_to_its_local_share() {
    let mut redis = Redis::start();
    let fake = Fake::start(&["--workers", "4", "--chunk-delay-ms", "100"]);
    let policy = fleet_policy(&redis, 4, "");
    let g1 = Gateway::start(&policy, &fake.url());
    let g2 = Gateway::start(&policy, &fake.url());
    wait_for_gateways(&g1, 2);
    wait_for_gateways(&g2, 2);
    redis.down();
    // Redis cannot be asked: the first gateway falls back to its share, 4 / 2 gateways = 2;
    // never to unlimited. Every request is still served.
    let rs = burst(&[g1.addr], 8, "shared-key-000", &slow_chat());
    for r in &rs {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let most = fake.stats()["max_active"].as_i64().unwrap();
    assert_eq!(most, 2, "the host had {most} requests at once");
    let m = request(g1.addr, "GET", "/metrics", &[], None).text();
    assert!(
        m.contains("ratelimit_backend_errors_total{result=\"local_share\"}"),
        "{m}"
    );
}

#[test]
fn across_two_gateways_a_key_with_many_queued_does_not_starve_a_key_with_one() {
    let redis = Redis::start();
    let fake = Fake::start(&["--workers", "4", "--chunk-delay-ms", "100"]);
    let policy = fleet_policy(&redis, 1, "");
    let g1 = Gateway::start(&policy, &fake.url());
    let g2 = Gateway::start(&policy, &fake.url());
    let body = slow_chat();
    // Twelve of the heavy key's through the first gateway, ~300 ms each, one at a time.
    let heavy: Vec<_> = (0..12)
        .map(|_| {
            let (addr, body) = (g1.addr, body.clone());
            std::thread::spawn(move || {
                let r = request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("X-Api-Key", "heavy-key-0000")],
                    Some(body.as_bytes()),
                );
                (r.status, Instant::now())
            })
        })
        .collect();
    wait_for(
        Duration::from_secs(10),
        "the heavy key to be served",
        || (fake.stats()["chat_requests"].as_u64() >= Some(2)).then_some(()),
    );
    // The light key's one request, through the other gateway, goes before most of them.
    let r = request(
        g2.addr,
        "POST",
        "/v1/chat/completions",
        &[("X-Api-Key", "light-key-0000")],
        Some(body.as_bytes()),
    );
    let light_done = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    let done: Vec<Instant> = heavy
        .into_iter()
        .map(|h| {
            let (status, at) = h.join().unwrap();
            assert_eq!(status, 200);
            at
        })
        .collect();
    let after = done.iter().filter(|at| **at > light_done).count();
    assert!(
        after >= 6,
        "only {after} of the heavy key's 12 requests were served after the light key's one"
    );
}

/// A conversation keeps its backend whichever gateway each turn reaches (affinity shared
/// through Redis), and leaves it when it dies: the next turn goes to a live one and stays.
#[test]
fn a_conversation_keeps_its_backend_across_gateways_and_leaves_a_dead_one() {
    let redis = Redis::start();
    let mut fakes = [
        Some(Fake::start(&["--models", "qwen3:32b"])),
        Some(Fake::start(&["--models", "qwen3:32b"])),
    ];
    let policy = format!(
        "{}rate_limit: {{enabled: true, max_requests: 100000, window_seconds: 60, backend: redis, redis_url: \"{}\", redis_timeout_ms: 200}}\n",
        backends_policy(&[fakes[0].as_ref().unwrap(), fakes[1].as_ref().unwrap()])
            .replace("rate_limit: {enabled: false}\n", ""),
        redis.url()
    );
    let gws = [
        Gateway::start(&policy, "unused"),
        Gateway::start(&policy, "unused"),
    ];
    let counts = |fakes: &[Option<Fake>; 2]| -> Vec<u64> {
        fakes
            .iter()
            .map(|f| f.as_ref().map_or(0, Fake::chat_requests))
            .collect()
    };
    let mut messages = vec![
        json!({"role": "system", "content": "You are the shared agent."}),
        json!({"role": "user", "content": "first question"}),
    ];
    let mut turn = |gw: &Gateway, n: usize| {
        let body = json!({"model": "qwen3:32b", "stream": false, "messages": messages});
        let r = request(
            gw.addr,
            "POST",
            "/api/chat",
            &[("X-Api-Key", "shared-key-000")],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(r.status, 200, "turn {n}: {}", r.text());
        messages.push(json!({"role": "assistant", "content": format!("answer {n}")}));
        messages.push(json!({"role": "user", "content": format!("question {n}")}));
    };
    turn(&gws[0], 0);
    let first = counts(&fakes);
    let home = usize::from(first[1] == 1);
    // The next turns alternate gateways: every one reaches the same backend (the other
    // gateway learns it from Redis, within its next request).
    for n in 1..7 {
        turn(&gws[n % 2], n);
    }
    let c = counts(&fakes);
    assert_eq!(c[home], 7, "turns reached {c:?}");
    assert_eq!(c[1 - home], 0, "turns reached {c:?}");
    // The conversation's backend dies: the next turn goes to the other, and stays there.
    if let Some(mut f) = fakes[home].take() {
        f.kill();
    }
    for n in 7..11 {
        turn(&gws[n % 2], n);
    }
    assert_eq!(counts(&fakes)[1 - home], 4);
}

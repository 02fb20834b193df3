//! Benchmark reference only: the cheapest pass-through actix-web + awc can do (no guards,
//! no translation, no audit, body forwarded as is). `scripts/bench.sh` runs it as the floor
//! the framework itself sets, so the gateway's own share can be told apart from actix/awc's.
//!
//! Usage: bare-proxy LISTEN UPSTREAM   (e.g. 127.0.0.1:0 127.0.0.1:11434)

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;

struct Up {
    client: awc::Client,
    base: String,
}

async fn forward(req: HttpRequest, body: Bytes, up: web::Data<Up>) -> HttpResponse {
    let url = format!("{}{}", up.base, req.uri().path());
    let sent = up
        .client
        .post(url)
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await;
    match sent {
        Ok(mut resp) => match resp.body().await {
            Ok(b) => HttpResponse::build(resp.status())
                .content_type("application/json")
                .body(b),
            Err(_) => HttpResponse::BadGateway().finish(),
        },
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = match (args.get(1), args.get(2)) {
        (Some(l), Some(u)) => (l.clone(), u.clone()),
        _ => {
            eprintln!("usage: bare-proxy LISTEN UPSTREAM");
            std::process::exit(2);
        }
    };
    let base = format!("http://{upstream}");
    let server = HttpServer::new(move || {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(0))
            .disable_redirects()
            .finish();
        App::new()
            .app_data(web::Data::new(Up {
                client,
                base: base.clone(),
            }))
            .default_service(web::to(forward))
    })
    .workers(1)
    .bind(listen)?;
    for a in server.addrs() {
        println!("listening on {a}");
    }
    server.run().await
}

//! The fake Hetzner Cloud API itself, over raw HTTP/1.1 on a `TcpStream`: the
//! provider tests rely on it behaving like the real API in these ways.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_provider_hetzner::fake::FakeHetzner;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "secret-token";

/// A parsed HTTP response: status, lower-cased headers and the JSON body (`Null` if empty).
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// Sends one request with `Connection: close` and reads the whole response.
async fn raw(
    fake: &FakeHetzner,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let url = fake.url();
    let host = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} /v1{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(&host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap()
    };
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(fake: &FakeHetzner, path: &str) -> Resp {
    raw(fake, "GET", path, Some(TOKEN), None).await
}

async fn post(fake: &FakeHetzner, path: &str, body: Value) -> Resp {
    raw(fake, "POST", path, Some(TOKEN), Some(body)).await
}

/// Asserts an error response: status, JSON content type and error code.
fn assert_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.body);
    assert_eq!(resp.headers["content-type"], "application/json");
    assert_eq!(resp.body["error"]["code"], code, "{}", resp.body);
    assert!(resp.body["error"]["message"].is_string());
}

/// Polls an action until it succeeds; returns how many polls it took.
async fn wait_action(fake: &FakeHetzner, action: &Value) -> u32 {
    let id = action["id"].as_u64().unwrap();
    for polls in 1..=10 {
        let resp = get(fake, &format!("/actions/{id}")).await;
        assert_eq!(resp.status, 200);
        if resp.body["action"]["status"] == "success" {
            return polls;
        }
    }
    panic!("action {id} never finished");
}

async fn create(fake: &FakeHetzner, name: &str, extra: Value) -> Resp {
    let mut body = json!({ "name": name, "server_type": "cx22", "image": "ubuntu-24.04" });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post(fake, "/servers", body).await
}

/// Creates a server and waits until it is running; returns its ID.
async fn running_server(fake: &FakeHetzner, name: &str) -> u64 {
    let resp = create(fake, name, json!({})).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    wait_action(fake, &resp.body["action"]).await;
    resp.body["server"]["id"].as_u64().unwrap()
}

async fn status(fake: &FakeHetzner, id: u64) -> Value {
    get(fake, &format!("/servers/{id}")).await.body["server"]["status"].clone()
}

#[tokio::test]
async fn auth_unknown_paths_and_request_count() {
    let fake = FakeHetzner::start(TOKEN).await;
    assert!(fake.url().starts_with("http://127.0.0.1:") && fake.url().ends_with("/v1"));
    assert_error(
        &raw(&fake, "GET", "/servers", None, None).await,
        401,
        "unauthorized",
    );
    assert_error(
        &raw(&fake, "GET", "/servers", Some("wrong"), None).await,
        401,
        "unauthorized",
    );
    assert_error(&get(&fake, "/volumes").await, 404, "not_found");
    assert_error(
        &raw(&fake, "PUT", "/server_types", Some(TOKEN), None).await,
        404,
        "not_found",
    );
    assert_error(
        &post(&fake, "/servers/1/actions/reboot", json!({})).await,
        404,
        "not_found",
    );
    assert_error(&get(&fake, "/servers/abc").await, 404, "not_found");
    assert_error(
        &get(&fake, "/servers?per_page=0").await,
        400,
        "invalid_input",
    );
    assert_eq!(get(&fake, "/servers").await.status, 200);
    assert_eq!(fake.requests(), 8);
}

#[tokio::test]
async fn server_types_and_pagination() {
    let fake = FakeHetzner::start(TOKEN).await;
    let resp = get(&fake, "/server_types").await;
    assert_eq!(resp.status, 200);
    let types = resp.body["server_types"].as_array().unwrap();
    let names: Vec<&str> = types.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cx22", "cx32", "cx42", "cax11"]);
    let cx22 = &types[0];
    assert_eq!(
        (
            cx22["cores"].clone(),
            cx22["memory"].clone(),
            cx22["disk"].clone()
        ),
        (json!(2), json!(4.0), json!(40))
    );
    assert_eq!(cx22["architecture"], "x86");
    assert_eq!(cx22["cpu_type"], "shared");
    assert_eq!(cx22["deprecated"], false);
    assert_eq!(cx22["storage_type"], "local");
    let locations: Vec<&str> = cx22["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["location"].as_str().unwrap())
        .collect();
    assert_eq!(locations, ["fsn1", "nbg1"]);
    for price in cx22["prices"].as_array().unwrap() {
        assert_eq!(
            price["price_hourly"],
            json!({ "net": "0.0060000000", "gross": "0.0071400000" })
        );
        assert_eq!(
            price["price_monthly"],
            json!({ "net": "3.7900000000", "gross": "4.5101000000" })
        );
    }
    assert_eq!(types[3]["architecture"], "arm");
    assert_eq!(types[1]["prices"][0]["price_hourly"]["net"], "0.0110000000");
    assert_eq!(types[2]["prices"][0]["price_hourly"]["net"], "0.0270000000");
    assert_eq!(types[3]["prices"][0]["price_hourly"]["net"], "0.0059000000");
    let p = &resp.body["meta"]["pagination"];
    assert_eq!(
        *p,
        json!({ "page": 1, "per_page": 25, "previous_page": null, "next_page": null, "last_page": 1, "total_entries": 4 })
    );

    let resp = get(&fake, "/server_types?page=1&per_page=3").await;
    assert_eq!(resp.body["server_types"].as_array().unwrap().len(), 3);
    assert_eq!(resp.body["meta"]["pagination"]["next_page"], 2);
    let resp = get(&fake, "/server_types?page=2&per_page=3").await;
    assert_eq!(resp.body["server_types"][0]["name"], "cax11");
    let p = &resp.body["meta"]["pagination"];
    assert_eq!(
        (
            p["previous_page"].clone(),
            p["next_page"].clone(),
            p["last_page"].clone()
        ),
        (json!(1), Value::Null, json!(2))
    );
}

#[tokio::test]
async fn create_server_lifecycle_needs_polling() {
    let fake = FakeHetzner::start(TOKEN).await;
    let extra = json!({ "labels": { "fleet": "t1" }, "user_data": "#cloud-config\n", "location": "nbg1",
                        "ssh_keys": ["k"], "unknown_field": { "x": 1 } });
    let resp = create(&fake, "web-1", extra).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let (server, action) = (&resp.body["server"], &resp.body["action"]);
    assert_eq!(server["status"], "initializing");
    assert_eq!(server["server_type"]["name"], "cx22");
    assert_eq!(server["server_type"]["prices"][0]["location"], "fsn1");
    assert_eq!(
        (
            server["datacenter"]["name"].clone(),
            server["datacenter"]["location"]["name"].clone()
        ),
        (json!("nbg1-dc3"), json!("nbg1"))
    );
    assert_eq!(server["location"], server["datacenter"]["location"]);
    assert_eq!(
        (
            server["location"]["city"].clone(),
            server["location"]["network_zone"].clone()
        ),
        (json!("Nuremberg"), json!("eu-central"))
    );
    let image = &server["image"];
    assert_eq!(
        (
            image["id"].clone(),
            image["name"].clone(),
            image["type"].clone()
        ),
        (json!(161547269), json!("ubuntu-24.04"), json!("system"))
    );
    assert_eq!(
        (image["os_flavor"].clone(), image["os_version"].clone()),
        (json!("ubuntu"), json!("24.04"))
    );
    assert_eq!(
        server["protection"],
        json!({ "delete": false, "rebuild": false })
    );
    assert_eq!(
        (
            server["private_net"].clone(),
            server["rescue_enabled"].clone()
        ),
        (json!([]), json!(false))
    );
    assert_eq!(server["labels"], json!({ "fleet": "t1" }));
    assert_eq!(
        (
            server["primary_disk_size"].clone(),
            server["locked"].clone()
        ),
        (json!(40), json!(false))
    );
    let id = server["id"].as_u64().unwrap();
    let ip = format!("203.0.113.{}", id % 250);
    assert_eq!(
        server["public_net"]["ipv4"],
        json!({ "id": id + 1_000_000, "ip": ip, "blocked": false,
                "dns_ptr": format!("static.{ip}.clients.your-server.de") })
    );
    assert_eq!(
        server["public_net"]["ipv6"]["ip"],
        format!("2001:db8:{id:x}::/64")
    );
    assert_eq!(server["public_net"]["floating_ips"], json!([]));
    let created = server["created"].as_str().unwrap();
    let year: u32 = created[..4].parse().unwrap();
    assert!((2025..2100).contains(&year), "{created}");
    assert_eq!(
        (created.len(), &created[10..11], &created[19..]),
        (25, "T", "+00:00")
    );
    assert_eq!(
        (
            resp.body["next_actions"].clone(),
            resp.body["root_password"].clone()
        ),
        (json!([]), Value::Null)
    );
    assert_eq!(action["command"], "create_server");
    assert_eq!(
        (action["status"].clone(), action["progress"].clone()),
        (json!("running"), json!(0))
    );
    assert_eq!(action["resources"], json!([{ "id": id, "type": "server" }]));
    assert_eq!(
        (action["finished"].clone(), action["error"].clone()),
        (Value::Null, Value::Null)
    );
    assert_ne!(action["id"], server["id"]);

    // First poll: still running; second poll: success.
    let path = format!("/actions/{}", action["id"]);
    assert_eq!(get(&fake, &path).await.body["action"]["status"], "running");
    assert_eq!(status(&fake, id).await, "initializing");
    let done = get(&fake, &path).await.body["action"].clone();
    assert_eq!(
        (done["status"].clone(), done["progress"].clone()),
        (json!("success"), json!(100))
    );
    let finished = done["finished"].as_str().unwrap();
    assert_eq!((finished.len(), &finished[10..11]), (25, "T"));
    assert!(done["started"].as_str().unwrap() <= finished && created <= finished);
    assert_eq!(status(&fake, id).await, "running");

    let servers = fake.servers();
    assert_eq!(servers.len(), 1);
    let s = &servers[0];
    assert_eq!(
        (
            s.id,
            s.name.as_str(),
            s.status.as_str(),
            s.server_type.as_str()
        ),
        (id, "web-1", "running", "cx22")
    );
    assert_eq!(
        s.labels,
        BTreeMap::from([("fleet".to_string(), "t1".to_string())])
    );
    assert_eq!(
        (s.user_data.as_deref(), s.image.as_str()),
        (Some("#cloud-config\n"), "ubuntu-24.04")
    );

    // start_after_create=false ends "off".
    let resp = create(&fake, "web-2", json!({ "start_after_create": false })).await;
    wait_action(&fake, &resp.body["action"]).await;
    assert_eq!(
        status(&fake, resp.body["server"]["id"].as_u64().unwrap()).await,
        "off"
    );
}

#[tokio::test]
async fn actions_finish_by_themselves_after_50ms() {
    let fake = FakeHetzner::start(TOKEN).await;
    let resp = create(&fake, "timer", json!({})).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(fake.servers()[0].status, "running");
    assert_eq!(wait_action(&fake, &resp.body["action"]).await, 1);
}

#[tokio::test]
async fn create_server_errors() {
    let fake = FakeHetzner::start(TOKEN).await;
    running_server(&fake, "taken").await;
    let resp = create(&fake, "taken", json!({})).await;
    assert_error(&resp, 409, "uniqueness_error");
    assert_eq!(resp.body["error"]["message"], "server name is already used");
    assert_eq!(
        resp.body["error"]["details"],
        json!({ "fields": [{ "name": "name" }] })
    );

    let resp = create(&fake, "a", json!({ "server_type": "cx99" })).await;
    assert_error(&resp, 400, "invalid_input");
    assert!(
        resp.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server_type")
    );
    let resp = create(&fake, "a", json!({ "image": "windows-95" })).await;
    assert_error(&resp, 400, "invalid_input");
    assert!(
        resp.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image")
    );
    assert_error(
        &create(&fake, "a", json!({ "image": 424242 })).await,
        400,
        "invalid_input",
    );
    assert_error(
        &create(&fake, "a", json!({ "location": "mars1" })).await,
        400,
        "invalid_input",
    );
    for bad in [
        "under_score",
        "-lead",
        "trail-",
        "dot..dot",
        &"x".repeat(64),
    ] {
        let resp = create(&fake, bad, json!({})).await;
        assert_error(&resp, 400, "invalid_input");
        assert!(
            resp.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("name")
        );
    }
    assert_eq!(
        create(&fake, &format!("{}.example", "x".repeat(63)), json!({}))
            .await
            .status,
        201
    );
    assert_error(
        &post(&fake, "/servers", json!({ "server_type": "cx22" })).await,
        400,
        "invalid_input",
    );
    assert_error(
        &raw(&fake, "POST", "/servers", Some(TOKEN), None).await,
        400,
        "invalid_input",
    );
    assert_eq!(fake.servers().len(), 2);
}

#[tokio::test]
async fn power_and_change_type() {
    let fake = FakeHetzner::start(TOKEN).await;
    let id = running_server(&fake, "resize-me").await;
    let act = |a: &str| format!("/servers/{id}/actions/{a}");

    let resp = post(
        &fake,
        &act("change_type"),
        json!({ "server_type": "cx32", "upgrade_disk": true }),
    )
    .await;
    assert_error(&resp, 409, "server_not_stopped");

    let resp = post(&fake, &act("shutdown"), json!({})).await;
    assert_eq!(
        (resp.status, resp.body["action"]["command"].clone()),
        (201, json!("shutdown_server"))
    );
    assert_eq!(status(&fake, id).await, "stopping");
    wait_action(&fake, &resp.body["action"]).await;
    assert_eq!(status(&fake, id).await, "off");

    let resp = raw(&fake, "POST", &act("poweroff"), Some(TOKEN), None).await; // lenient, no body
    assert_eq!(
        (resp.status, resp.body["action"]["command"].clone()),
        (201, json!("stop_server"))
    );
    assert_eq!(status(&fake, id).await, "off");
    wait_action(&fake, &resp.body["action"]).await;

    assert_error(
        &post(&fake, &act("change_type"), json!({ "server_type": "cx99" })).await,
        400,
        "invalid_input",
    );
    let resp = post(
        &fake,
        &act("change_type"),
        json!({ "server_type": "cx32", "upgrade_disk": true, "x": 1 }),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(resp.body["action"]["command"], "change_server_type");
    let server = get(&fake, &format!("/servers/{id}")).await.body["server"].clone();
    assert_eq!(
        (
            server["status"].clone(),
            server["server_type"]["name"].clone()
        ),
        (json!("migrating"), json!("cx22"))
    );
    wait_action(&fake, &resp.body["action"]).await;
    let server = get(&fake, &format!("/servers/{id}")).await.body["server"].clone();
    assert_eq!(
        (
            server["status"].clone(),
            server["server_type"]["name"].clone()
        ),
        (json!("off"), json!("cx32"))
    );
    assert_eq!(server["primary_disk_size"], 80);
    assert_eq!(fake.servers()[0].server_type, "cx32");

    let resp = post(&fake, &act("poweron"), json!({})).await;
    assert_eq!(
        (resp.status, resp.body["action"]["command"].clone()),
        (201, json!("start_server"))
    );
    assert_eq!(status(&fake, id).await, "starting");
    wait_action(&fake, &resp.body["action"]).await;
    assert_eq!(status(&fake, id).await, "running");

    let resp = post(&fake, &act("poweron"), json!({})).await; // lenient
    assert_eq!(resp.status, 201);
    assert_eq!(status(&fake, id).await, "running");
    assert_error(
        &post(&fake, "/servers/999999/actions/poweron", json!({})).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn snapshots_and_create_from_snapshot() {
    let fake = FakeHetzner::start(TOKEN).await;
    let id = running_server(&fake, "golden").await;
    let body = json!({ "type": "snapshot", "description": "golden image", "labels": { "k": "v" } });
    let resp = post(&fake, &format!("/servers/{id}/actions/create_image"), body).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let image = &resp.body["image"];
    assert_eq!(
        (image["type"].clone(), image["status"].clone()),
        (json!("snapshot"), json!("creating"))
    );
    assert_eq!(
        (image["image_size"].clone(), image["disk_size"].clone()),
        (Value::Null, json!(40))
    );
    assert_eq!(image["description"], "golden image");
    assert_eq!(image["labels"], json!({ "k": "v" }));
    assert_eq!(image["created_from"], json!({ "id": id, "name": "golden" }));
    assert_eq!(resp.body["action"]["command"], "create_image");
    assert_eq!(status(&fake, id).await, "running");
    let image_id = image["id"].as_u64().unwrap();

    // Not usable while still being created.
    assert_error(
        &create(&fake, "clone-0", json!({ "image": image_id })).await,
        400,
        "invalid_input",
    );
    wait_action(&fake, &resp.body["action"]).await;
    let image = get(&fake, &format!("/images/{image_id}")).await.body["image"].clone();
    assert_eq!(
        (image["status"].clone(), image["image_size"].clone()),
        (json!("available"), json!(2.5))
    );
    assert_eq!(status(&fake, id).await, "running");

    for (name, image) in [
        ("clone-1", json!(image_id)),
        ("clone-2", json!(image_id.to_string())),
    ] {
        let resp = create(&fake, name, json!({ "image": image })).await;
        assert_eq!(resp.status, 201, "{}", resp.body);
        let image = &resp.body["server"]["image"];
        assert_eq!(
            (
                image["id"].clone(),
                image["name"].clone(),
                image["type"].clone()
            ),
            (json!(image_id), Value::Null, json!("snapshot"))
        );
        assert_eq!(image["created_from"], json!({ "id": id, "name": "golden" }));
    }
    assert_eq!(fake.servers()[2].image, image_id.to_string());
    assert_error(&get(&fake, "/images/12345").await, 404, "not_found");
    assert_eq!(
        get(&fake, "/images/161547269").await.body["image"]["name"],
        "ubuntu-24.04"
    );
}

#[tokio::test]
async fn delete_server_after_action() {
    let fake = FakeHetzner::start(TOKEN).await;
    let id = running_server(&fake, "doomed").await;
    let resp = raw(
        &fake,
        "DELETE",
        &format!("/servers/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (resp.status, resp.body["action"]["command"].clone()),
        (200, json!("delete_server"))
    );
    assert_eq!(status(&fake, id).await, "deleting");
    wait_action(&fake, &resp.body["action"]).await;
    assert_error(
        &get(&fake, &format!("/servers/{id}")).await,
        404,
        "not_found",
    );
    let resp = raw(
        &fake,
        "DELETE",
        &format!("/servers/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_error(&resp, 404, "not_found");
    assert_eq!(
        resp.body["error"]["message"],
        format!("server with ID '{id}' not found")
    );
    assert!(fake.servers().is_empty());
    assert_eq!(create(&fake, "doomed", json!({})).await.status, 201);

    // Deleting while the create action is still running: the server stays "deleting", then goes.
    let resp = create(&fake, "short-lived", json!({})).await;
    let id = resp.body["server"]["id"].as_u64().unwrap();
    let delete = raw(
        &fake,
        "DELETE",
        &format!("/servers/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    wait_action(&fake, &resp.body["action"]).await;
    assert_eq!(status(&fake, id).await, "deleting");
    wait_action(&fake, &delete.body["action"]).await;
    assert_eq!(fake.servers().len(), 1);
}

#[tokio::test]
async fn list_servers_with_filters() {
    let fake = FakeHetzner::start(TOKEN).await;
    for (name, labels) in [
        ("a", json!({ "fleet": "x", "role": "web" })),
        ("b", json!({ "fleet": "x" })),
        ("c", json!({ "fleet": "y" })),
    ] {
        assert_eq!(
            create(&fake, name, json!({ "labels": labels }))
                .await
                .status,
            201
        );
    }
    let names = |resp: &Resp| -> Vec<String> {
        resp.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&get(&fake, "/servers").await), ["a", "b", "c"]);
    assert_eq!(names(&get(&fake, "/servers?name=b").await), ["b"]);
    assert!(names(&get(&fake, "/servers?name=zzz").await).is_empty());
    assert_eq!(
        names(&get(&fake, "/servers?label_selector=fleet%3Dx").await),
        ["a", "b"]
    );
    assert_eq!(
        names(&get(&fake, "/servers?label_selector=fleet%3Dx%2Crole").await),
        ["a"]
    );
    assert_eq!(
        names(&get(&fake, "/servers?label_selector=role").await),
        ["a"]
    );
    assert_eq!(
        names(&get(&fake, "/servers?label_selector=fleet=y&name=c").await),
        ["c"]
    );

    let resp = get(&fake, "/servers?per_page=2").await;
    assert_eq!(names(&resp), ["a", "b"]);
    assert_eq!(resp.body["meta"]["pagination"]["next_page"], 2);
    let resp = get(&fake, "/servers?per_page=2&page=2").await;
    assert_eq!(names(&resp), ["c"]);
    let p = &resp.body["meta"]["pagination"];
    assert_eq!(
        *p,
        json!({ "page": 2, "per_page": 2, "previous_page": 1, "next_page": null, "last_page": 2, "total_entries": 3 })
    );
}

#[tokio::test]
async fn rate_limit_and_failed_creates() {
    let fake = FakeHetzner::start(TOKEN).await;
    fake.rate_limit_next(2);
    for _ in 0..2 {
        let resp = get(&fake, "/server_types").await;
        assert_error(&resp, 429, "rate_limit_exceeded");
        assert_eq!(resp.headers["ratelimit-limit"], "3600");
        assert_eq!(resp.headers["ratelimit-remaining"], "0");
        let reset: u64 = resp.headers["ratelimit-reset"].parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now..=now + 2).contains(&reset));
    }
    assert_eq!(get(&fake, "/server_types").await.status, 200);
    assert_eq!(fake.requests(), 3);

    fake.fail_creates(1);
    assert_error(
        &create(&fake, "no-room", json!({})).await,
        412,
        "resource_unavailable",
    );
    assert!(fake.servers().is_empty());
    assert_eq!(create(&fake, "no-room", json!({})).await.status, 201);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let fake = FakeHetzner::start(TOKEN).await;
    let host = fake
        .url()
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    assert_eq!(get(&fake, "/server_types").await.status, 200);
    drop(fake);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(&host).await.is_err());
}

/// Decodes a body into an `hcloud` model, failing with the body on a mismatch.
fn model<T: serde::de::DeserializeOwned>(resp: &Resp) -> T {
    assert!((200..300).contains(&resp.status), "{}", resp.body);
    serde_json::from_value(resp.body.clone())
        .unwrap_or_else(|e| panic!("not an {}: {e}\n{}", std::any::type_name::<T>(), resp.body))
}

#[tokio::test]
async fn answers_are_what_the_hcloud_models_require() {
    use hcloud::models::{
        ChangeTypeOfServerResponse, CreateImageFromServerResponse, CreateServerResponse,
        DeleteServerResponse, GetActionResponse, GetImageResponse, GetServerResponse,
        ListLocationsResponse, ListServerTypesResponse, ListServersResponse,
        PowerOffServerResponse, PowerOnServerResponse, ShutdownServerResponse,
    };
    let fake = FakeHetzner::start(TOKEN).await;
    let types: ListServerTypesResponse = model(&get(&fake, "/server_types").await);
    assert_eq!(types.server_types.len(), 4);
    assert_eq!(types.server_types[0].locations.len(), 2);
    let locations: ListLocationsResponse = model(&get(&fake, "/locations").await);
    assert_eq!(locations.locations[0].name, "fsn1");

    let created: CreateServerResponse = model(&create(&fake, "m-1", json!({})).await);
    let id = created.server.id;
    let server = get(&fake, &format!("/servers/{id}")).await;
    let server: GetServerResponse = model(&server);
    assert_eq!(server.server.unwrap().name, "m-1");
    let listed: ListServersResponse = model(&get(&fake, "/servers").await);
    assert_eq!(listed.meta.pagination.total_entries, Some(1));
    let action = get(&fake, &format!("/actions/{}", created.action.id)).await;
    let _: GetActionResponse = model(&action);

    let act = |a: &str| format!("/servers/{id}/actions/{a}");
    let _: PowerOffServerResponse = model(&post(&fake, &act("poweroff"), json!({})).await);
    let _: ShutdownServerResponse = model(&post(&fake, &act("shutdown"), json!({})).await);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let to_cx32 = json!({ "server_type": "cx32", "upgrade_disk": false });
    let resp = post(&fake, &act("change_type"), to_cx32).await;
    let _: ChangeTypeOfServerResponse = model(&resp);
    let _: PowerOnServerResponse = model(&post(&fake, &act("poweron"), json!({})).await);
    let snap = post(&fake, &act("create_image"), json!({ "type": "snapshot" })).await;
    let snap: CreateImageFromServerResponse = model(&snap);
    let image_id = snap.image.unwrap().id;
    let image: GetImageResponse = model(&get(&fake, &format!("/images/{image_id}")).await);
    assert_eq!(image.image.unwrap().created_from.unwrap().name, "m-1");
    let system: GetImageResponse = model(&get(&fake, "/images/114690387").await);
    assert_eq!(system.image.unwrap().name.as_deref(), Some("debian-12"));
    let deleted = raw(
        &fake,
        "DELETE",
        &format!("/servers/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    let _: DeleteServerResponse = model(&deleted);
}

#[tokio::test]
async fn locations_are_listed() {
    let fake = FakeHetzner::start(TOKEN).await;
    let resp = get(&fake, "/locations?per_page=1").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body["locations"][0]["name"], "fsn1");
    assert_eq!(resp.body["meta"]["pagination"]["next_page"], 2);
    let resp = get(&fake, "/locations?name=nbg1").await;
    assert_eq!(resp.body["locations"][0]["city"], "Nuremberg");
}

#[tokio::test]
async fn every_answer_carries_the_rate_limit() {
    let fake = FakeHetzner::start(TOKEN).await;
    let first = get(&fake, "/server_types").await;
    let second = get(&fake, "/nothing-here").await;
    let unauthorized = raw(&fake, "GET", "/servers", None, None).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (resp, remaining) in [(&first, 3599), (&second, 3598), (&unauthorized, 3597)] {
        assert_eq!(resp.headers["ratelimit-limit"], "3600");
        let left: u64 = resp.headers["ratelimit-remaining"].parse().unwrap();
        // The bucket refills by one a second; the test may straddle one.
        assert!((remaining..=remaining + 2).contains(&left), "{left}");
        let reset: u64 = resp.headers["ratelimit-reset"].parse().unwrap();
        assert!(
            (now..=now + 3).contains(&reset),
            "the bucket is full again when the used requests have refilled: {reset} vs {now}"
        );
    }
}

#[tokio::test]
async fn rate_limit_windows_end_at_their_reset() {
    let fake = FakeHetzner::start(TOKEN).await;
    fake.rate_limit_for(Duration::from_millis(1_200));
    let resp = get(&fake, "/server_types").await;
    assert_error(&resp, 429, "rate_limit_exceeded");
    assert_eq!(resp.headers["ratelimit-remaining"], "0");
    let reset: u64 = resp.headers["ratelimit-reset"].parse().unwrap();
    let again = get(&fake, "/servers").await;
    assert_error(&again, 429, "rate_limit_exceeded");
    assert_eq!(again.headers["ratelimit-reset"], reset.to_string());
    assert_eq!(fake.rate_limited_requests(), 2);
    // At the reset second, requests pass again.
    let at = std::time::UNIX_EPOCH + Duration::from_secs(reset);
    let wait = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
    assert_eq!(get(&fake, "/servers").await.status, 200);
    assert_eq!(fake.rate_limited_requests(), 2);
}

#[tokio::test]
async fn sold_out_server_types_fail_placement() {
    let fake = FakeHetzner::start(TOKEN).await;
    fake.set_capacity("cx22", false);
    let resp = create(&fake, "a", json!({})).await;
    assert_error(&resp, 412, "resource_unavailable");
    assert_eq!(resp.body["error"]["message"], "error during placement");
    assert_eq!(
        create(&fake, "b", json!({ "server_type": "cx32" }))
            .await
            .status,
        201
    );
    assert_error(
        &create(&fake, "c", json!({})).await,
        412,
        "resource_unavailable",
    );
    fake.set_capacity("cx22", true);
    assert_eq!(create(&fake, "a", json!({})).await.status, 201);
    assert_eq!(fake.servers().len(), 2);
}

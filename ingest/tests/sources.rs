//! A real webhook of each source, posted over HTTP, comes back from RabbitMQ
//! as the normalised event: the right kind, phone, dedup key and parameters.

mod common;

use std::time::Duration;

use common::{Harness, OTHER_KEY, fixture, take_events};
use shared::EventKind;
use shared::event::{DateLocale, Lookup, Route};

const FORM: &str = "application/x-www-form-urlencoded";

fn ids(body: &serde_json::Value) -> Vec<String> {
    body["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iiko_batch_each_event_on_its_own() {
    let h = Harness::start("src-iiko").await;
    let body = r#"[
      {"eventType":"DeliveryOrderUpdate","eventTime":"2026-11-24 18:00:00.000","organizationId":"org-7",
       "correlationId":"c1","eventInfo":{"id":"ord-142","creationStatus":"Success",
       "order":{"id":"ord-142","status":"Delivered","number":142,"phone":"8 (916) 123-45-67",
                "customer":{"type":"regular","name":"Иван"}}}},
      {"eventType":"DeliveryOrderUpdate","eventTime":"2026-11-24 18:00:01.000","organizationId":"org-7",
       "correlationId":"c2","eventInfo":{"id":"ord-143","creationStatus":"Success",
       "order":{"id":"ord-143","status":"CookingStarted","number":143,"phone":"+79161234567"}}},
      {"eventType":"StopListUpdate","eventTime":"2026-11-24 18:00:02.000","organizationId":"org-7",
       "correlationId":"c3","eventInfo":{"terminalGroupsStopListsUpdates":[]}}
    ]"#;
    let (status, resp) = h.post_json("iiko", body).await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["ignored"].as_array().unwrap().len(), 2, "{resp}");
    let events = take_events(&h.topology, 1, Duration::from_secs(3)).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(ids(&resp), vec![e.id.to_string()]);
    assert_eq!(e.kind, EventKind::OrderCompleted);
    assert_eq!(e.tenant, "acme");
    assert_eq!(e.recipient.phone.as_ref().unwrap().e164(), "+79161234567");
    assert_eq!(e.dedup_key, "acme:iiko:org-7:ord-142:order_completed");
    assert_eq!(e.location.as_deref(), Some("org-7"));
    assert_eq!(e.params.order_number.as_deref(), Some("142"));

    // Non-final only, and the real fixtures that are to be ignored: 200, nothing queued.
    for f in [
        "iiko_delivery_update_cooking_nonfinal_synthetic_spec.json",
        "iiko_delivery_update_creation_error_null_order_synthetic_spec.json",
        "iiko_stoplist_update_ignored_synthetic_spec.json",
        "iiko_empty_array_synthetic.json",
    ] {
        let (status, resp) = h.post("iiko", "application/json", fixture(f)).await;
        assert_eq!(status, 200, "{f}: {resp}");
        assert_eq!(resp["status"], "ignored");
    }
    assert!(
        take_events(&h.topology, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rkeeper_push_and_white_server() {
    let h = Harness::start("src-rkeeper").await;
    let push = r#"{"order":{"id":"rk-55","number":"55","status":"Выполнен","customer":{"phone":"+7 916 765-43-21","name":"Анна"}}}"#;
    let (status, resp) = h.post_json("rkeeper", push).await;
    assert_eq!(status, 202, "{resp}");
    let e = &take_events(&h.topology, 1, Duration::from_secs(3)).await[0];
    assert_eq!(e.kind, EventKind::OrderCompleted);
    assert_eq!(e.recipient.phone.as_ref().unwrap().e164(), "+79167654321");
    assert!(e.dedup_key.starts_with("acme:rkeeper:"), "{}", e.dedup_key);

    // White Server events carry no phone: understood, answered 200, not queued.
    let (status, resp) = h
        .post(
            "rkeeper",
            "application/json",
            fixture("rkeeper_ws_event_order_status_changed_docs.json"),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["ignored"][0]["reason"], "no phone");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yclients_real_capture_when_the_client_arrived() {
    let h = Harness::start("src-yclients").await;
    let waiting = fixture("yclients_record_update_real_capture_php_comment.json");
    let (status, _) = h
        .post("yclients", "application/json", waiting.clone())
        .await;
    assert_eq!(status, 200, "visit_attendance 0 is not a finished visit");

    let arrived = String::from_utf8(waiting).unwrap().replace(
        r#""visit_attendance":0,"attendance":0"#,
        r#""visit_attendance":1,"attendance":1"#,
    );
    let (status, resp) = h.post_json("yclients", &arrived).await;
    assert_eq!(status, 202, "{resp}");
    let e = &take_events(&h.topology, 1, Duration::from_secs(3)).await[0];
    assert_eq!(e.kind, EventKind::VisitCompleted);
    assert_eq!(e.recipient.phone.as_ref().unwrap().e164(), "+79999856814");
    assert_eq!(e.recipient.name.as_deref(), Some("Олеся"));
    assert_eq!(
        e.dedup_key,
        "acme:yclients:358944:234961815:visit_completed"
    );
    assert_eq!(e.params.staff.as_deref(), Some("Герасимова Лариса"));
    assert_eq!(e.params.services.len(), 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amocrm_form_with_phone_and_minimal_hook_for_lookup() {
    let h = Harness::start("src-amocrm").await;
    // Seed 001's example, form-encoded as AmoCRM sends it.
    let body = "leads%5Bstatus%5D%5B0%5D%5Bid%5D=12345&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142\
        &leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=789&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=456\
        &contacts%5Bupdate%5D%5B0%5D%5Bid%5D=111\
        &contacts%5Bupdate%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bid%5D=66192\
        &contacts%5Bupdate%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bname%5D=%D0%A2%D0%B5%D0%BB%D0%B5%D1%84%D0%BE%D0%BD\
        &contacts%5Bupdate%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Bvalue%5D=79991234567\
        &account%5Bsubdomain%5D=acme&account%5Bid%5D=777";
    let (status, resp) = h.post("amocrm", FORM, body.as_bytes().to_vec()).await;
    assert_eq!(status, 202, "{resp}");
    let e = &take_events(&h.topology, 1, Duration::from_secs(3)).await[0];
    assert_eq!(e.kind, EventKind::DealWon);
    assert_eq!(e.recipient.phone.as_ref().unwrap().e164(), "+79991234567");
    assert_eq!(e.dedup_key, "acme:amocrm:777:12345:deal_won");
    assert!(e.lookup.is_none());

    // The modern minimal hook: no phone at all → queued for a look-up.
    let (status, resp) = h
        .post_to(
            &format!("/api/webhook/amocrm?key={OTHER_KEY}"),
            FORM,
            fixture("amocrm_form_leads_status_minimal_v4_logged_drvorobjev.txt"),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let e = &take_events(&h.topology, 1, Duration::from_secs(3)).await[0];
    assert_eq!(e.tenant, "salon");
    assert!(e.recipient.phone.is_none());
    match &e.lookup {
        Some(Lookup::Amocrm {
            lead_id,
            account_id,
            subdomain,
        }) => {
            assert_eq!(lead_id, "23802129");
            assert_eq!(account_id.as_deref(), Some("29013640"));
            assert_eq!(subdomain.as_deref(), Some("drvorobjev"));
        }
        other => panic!("expected an AmoCRM look-up, got {other:?}"),
    }

    // Non-final status and plain updates: 200 ignored.
    for f in [
        "amocrm_form_leads_status_nonfinal_zapier_capture.txt",
        "amocrm_form_leads_update_zapier_capture.txt",
        "amocrm_form_contacts_add_no_phone_zapier_capture.txt",
    ] {
        let (status, resp) = h.post("amocrm", FORM, fixture(f)).await;
        assert_eq!(status, 200, "{f}: {resp}");
    }
    // Broken encoding is a 400 with a reason, not a crash.
    let (status, resp) = h
        .post("amocrm", FORM, b"leads%5Bstatus%ZZ=1&%%%".to_vec())
        .await;
    assert_eq!(status, 400, "{resp}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_carries_url_formatting_and_wazzup_route() {
    let h = Harness::start("src-booking").await;
    let body = r#"{"event":"UpdateCaseTime","case":{"id":"c-1001","number":"1001","type":"booking",
        "name":"Стрижка","start":"2026-12-01T10:00:00+03:00","previous_start":"2026-12-01T09:00:00+03:00",
        "address":"ул. Ленина, 1","resources":[{"name":"Мастер Анна"}]},
        "client":{"name":"Иван","phone":"+79161234567"}}"#;
    let q = "time_zone=Asia/Yekaterinburg&date_locales=en-US&hide_url=true&message=See%20you\
             &key_api=f8f1955587ac6d7894cee95f92dcaca4&channel_id=3349fab8-b01b-4232-b9cb-a15ec3acc053&chat_type=whatsapp";
    let (status, resp) = h
        .post_to(
            &format!("/api/webhook/booking?key={}&{q}", common::KEY),
            "application/json",
            body.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let e = &take_events(&h.topology, 1, Duration::from_secs(3)).await[0];
    assert_eq!(e.kind, EventKind::BookingTimeChanged);
    let f = e.format.as_ref().expect("booking events carry formatting");
    assert_eq!(f.time_zone, "Asia/Yekaterinburg");
    assert_eq!(f.date_locale, DateLocale::EnUs);
    assert_eq!(f.message.as_deref(), Some("See you"));
    assert!(
        matches!(&e.route, Some(Route::Wazzup { channel_id, .. }) if channel_id == "3349fab8-b01b-4232-b9cb-a15ec3acc053")
    );
    assert_eq!(
        e.params.starts_at.map(|t| t.to_rfc3339()).as_deref(),
        Some("2026-12-01T10:00:00+03:00")
    );
    assert_eq!(
        e.params
            .previous_starts_at
            .map(|t| t.to_rfc3339())
            .as_deref(),
        Some("2026-12-01T09:00:00+03:00")
    );
    h.finish().await;
}

/// With `security.seal_key`, the Wazzup key of a booking URL is sealed
/// before the event is written anywhere: RabbitMQ never holds it in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_a_booking_url_is_sealed_before_it_is_written() {
    const SEAL_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let h = Harness::start_with(
        "src-seal",
        common::AMQP,
        &format!("[security]\nseal_key = \"{SEAL_KEY}\"\n"),
    )
    .await;
    let body = r#"{"event":"UpdateCaseTime","case":{"id":"c-7","number":"7","type":"booking","previous_start":"2026-12-01T09:00:00+03:00",
        "name":"Стрижка","start":"2026-12-01T10:00:00+03:00"},"client":{"name":"Иван","phone":"+79161234567"}}"#;
    let key_api = "f8f1955587ac6d7894cee95f92dcaca4";
    let (status, resp) = h
        .post_to(
            &format!(
                "/api/webhook/booking?key={}&key_api={key_api}&channel_id=3349fab8-b01b-4232-b9cb-a15ec3acc053&chat_type=whatsapp",
                common::KEY
            ),
            "application/json",
            body.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let e = &take_events(&h.topology, 1, Duration::from_secs(3)).await[0];
    let raw = String::from_utf8(e.to_json()).unwrap();
    assert!(!raw.contains(key_api), "{raw}");
    let Some(Route::Wazzup { api_key, .. }) = &e.route else {
        panic!("the route is kept: {raw}");
    };
    let sealer = shared::seal::Sealer::from_base64(SEAL_KEY).unwrap();
    assert_eq!(
        shared::seal::Sealer::open(Some(&sealer), api_key).unwrap(),
        key_api,
        "the dispatcher, holding the key, opens it"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_webhook_twice_has_one_dedup_key_and_bad_phones_are_ignored() {
    let h = Harness::start("src-dedup").await;
    let body = r#"{"order":{"id":"rk-9","status":"Доставлен","client":{"phone":"89161112233"}}}"#;
    let (s1, r1) = h.post_json("rkeeper", body).await;
    let (s2, r2) = h.post_json("rkeeper", body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_ne!(ids(&r1), ids(&r2), "each delivery is its own event id");
    let events = take_events(&h.topology, 2, Duration::from_secs(3)).await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].dedup_key, events[1].dedup_key,
        "the dispatcher dedups on this"
    );

    for (phone, reason) in [
        ("+7 495 123-45-67", "landline phone"),
        ("not a phone", "invalid phone"),
    ] {
        let body = format!(
            r#"{{"order":{{"id":"rk-10","status":"Выполнен","client":{{"phone":"{phone}"}}}}}}"#
        );
        let (status, resp) = h.post_json("rkeeper", &body).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["ignored"][0]["reason"], reason, "{resp}");
    }
    h.finish().await;
}

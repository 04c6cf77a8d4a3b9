//! RFC 9110 §15.5.6: a 405 names the methods the path is served with, in an
//! `Allow` header. Each listener reads them off its own OpenAPI document, so
//! the answer cannot drift from what is described (and so served).

use serde_json::Value;

/// The methods `path` is served with on the listener the OpenAPI document
/// `doc` describes, upper case and sorted; `None` when no documented path
/// matches it (a 404).
pub fn allowed_methods(doc: &Value, path: &str) -> Option<Vec<String>> {
    let paths = doc.get("paths")?.as_object()?;
    // The most specific templates are the resource: `/admin/dlq/purge`
    // and `/admin/opt-outs/{tenant}/check` rather than `/admin/dlq/{id}`
    // and `/admin/opt-outs/{tenant}/{id}`, which would also match.
    let specific = paths
        .keys()
        .filter(|t| matches(t, path))
        .map(|t| literal_segments(t))
        .max()?;
    let mut found: Option<Vec<String>> = None;
    for (template, item) in paths {
        if !matches(template, path) || literal_segments(template) != specific {
            continue;
        }
        let methods = found.get_or_insert_with(Vec::new);
        let Some(item) = item.as_object() else {
            continue;
        };
        for method in [
            "delete", "get", "head", "options", "patch", "post", "put", "trace",
        ] {
            let upper = method.to_ascii_uppercase();
            if item.contains_key(method) && !methods.contains(&upper) {
                methods.push(upper);
            }
        }
    }
    found.map(|mut m| {
        m.sort_unstable();
        m
    })
}

/// The documented paths another, less specific template also matches
/// (`/admin/dlq/purge` under `/admin/dlq/{id}`), with their methods: a
/// router that tries the template next would answer another method on
/// them as the template's operation, not 405.
pub fn shadowed(doc: &Value) -> Vec<(String, Vec<String>)> {
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Vec::new();
    };
    paths
        .keys()
        .filter(|p| paths.keys().any(|t| t != *p && matches(t, p)))
        .filter_map(|p| Some((p.clone(), allowed_methods(doc, p)?)))
        .collect()
}

fn literal_segments(template: &str) -> usize {
    template.split('/').filter(|t| !is_variable(t)).count()
}

fn is_variable(segment: &str) -> bool {
    segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}')
}

/// Whether a path template (`/admin/dlq/{id}`) matches a request path: the
/// same segments, a `{name}` standing for any one non-empty segment.
fn matches(template: &str, path: &str) -> bool {
    let t = template.split('/');
    let p = path.split('/');
    t.clone().count() == p.clone().count()
        && t.zip(p)
            .all(|(t, p)| (is_variable(t) && !p.is_empty()) || t == p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn methods_of_every_matching_template() {
        let d = json!({"paths": {
            "/admin/dlq/{id}": {"get": {}, "post": {}, "parameters": []},
            "/admin/dlq/purge": {"post": {}},
            "/admin/opt-outs/{tenant}/check": {"post": {}},
            "/admin/opt-outs/{tenant}/{id}": {"delete": {}},
            "/healthz": {"get": {}},
        }});
        let allowed = |p: &str| allowed_methods(&d, p);
        assert_eq!(allowed("/healthz"), Some(vec!["GET".to_string()]));
        assert_eq!(
            allowed("/admin/dlq/x"),
            Some(vec!["GET".into(), "POST".into()])
        );
        // A literal path is its own resource.
        assert_eq!(allowed("/admin/dlq/purge"), Some(vec!["POST".into()]));
        assert_eq!(
            allowed("/admin/opt-outs/acme/check"),
            Some(vec!["POST".into()])
        );
        assert_eq!(
            allowed("/admin/opt-outs/acme/12ab"),
            Some(vec!["DELETE".into()])
        );
        assert_eq!(allowed("/admin/dlq/"), None);
        assert_eq!(allowed("/admin/dlq/x/y"), None);
        assert_eq!(allowed("/nothing"), None);
        assert_eq!(
            shadowed(&d),
            vec![
                ("/admin/dlq/purge".to_string(), vec!["POST".to_string()]),
                (
                    "/admin/opt-outs/{tenant}/check".to_string(),
                    vec!["POST".to_string()]
                ),
            ]
        );
    }
}

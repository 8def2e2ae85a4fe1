//! Templates of "my links", a link's page and the delete confirmation.

use super::links::{ListQuery, PER_PAGE};
use super::pages::{copy_button, csrf_field, errors, layout, Input, Page, Refusal};
use crate::db::urls::Link;
use chrono::Timelike;
use maud::{html, Markup};
use serde_json::Value;

/// How many days the chart shows, ending today.
const CHART_DAYS: i64 = 30;

/// `1 click`, `2 clicks`.
fn count(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Why a switched-on link no longer redirects, if it does not: its expiry passed, or its
/// visits are used up (its code then answers 410).
fn ended(link: &Link) -> Option<&'static str> {
    if link.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
        Some("expired")
    } else if link.max_visits.is_some_and(|m| link.visits >= i64::from(m)) {
        Some("used up")
    } else {
        None
    }
}

fn short_url(base: &str, link: &Link) -> String {
    format!("{base}/{}", link.short_code)
}

/// A one-button form that turns a link on or off, coming back to `back`.
fn state_button(page: &Page, link: &Link, back: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/ui/links/" (link.id) "/state" } {
            (csrf_field(page))
            input type="hidden" name="back" value=(back);
            @if link.is_active {
                input type="hidden" name="active" value="false";
                button.link type="submit" { "Deactivate" }
            } @else {
                input type="hidden" name="active" value="true";
                button.link type="submit" { "Activate" }
            }
        }
    }
}

/// The list page; `problems`: what is wrong with the filter (the list is then empty).
pub fn links(
    page: &Page,
    query: &ListQuery,
    total: i64,
    list: &[Link],
    base: &str,
    problems: &[String],
) -> Markup {
    let pages = ((total + PER_PAGE - 1) / PER_PAGE).max(1);
    let back = format!("/ui/links?{}", query.at_page(query.page));
    layout(
        page,
        "My links",
        html! {
            h1 { "My links" }
            form.filters method="get" action="/ui/links" role="search" {
                label for="q" {
                    "Search"
                    input #q type="search" name="q" value=(query.q) placeholder="code, URL or title";
                }
                label for="state" {
                    "State"
                    select #state name="state" {
                        option value="" selected[query.state.is_empty()] { "All" }
                        option value="active" selected[query.state == "active"] { "Active" }
                        option value="inactive" selected[query.state == "inactive"] { "Inactive" }
                    }
                }
                label for="tag" {
                    "Tag"
                    input #tag type="text" name="tag" value=(query.tag);
                }
                button type="submit" { "Filter" }
            }
            (errors(problems))
            // A refused filter listed nothing: no count, no "no links yet".
            @if !problems.is_empty() {
            } @else if list.is_empty() {
                p.muted { (count(total, "link")) }
                p { "No links here yet. " a href="/" { "Shorten one" } }
            } @else {
                p.muted { (count(total, "link")) }
                ul.links {
                    @for link in list {
                        li {
                            a.code href={ "/ui/links/" (link.id) } { (link.short_code) }
                            @if !link.is_active { " " span.badge { "inactive" } }
                            @if let Some(why) = ended(link) { " " span.badge { (why) } }
                            div.target { (link.original_url) }
                            @if !link.tags.is_empty() {
                                div.row {
                                    @for tag in &link.tags {
                                        a.badge href={ "/ui/links?" (super::links::tag_query(tag)) } { (tag) }
                                    }
                                }
                            }
                            div.row {
                                span.muted { (count(link.visits, "visit")) }
                                a href=(short_url(base, link)) { "Open" }
                                (copy_button(&short_url(base, link)))
                                (state_button(page, link, &back))
                                a href={ "/ui/links/" (link.id) "/delete" } { "Delete" }
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pages aria-label="Pages" {
                    @if query.page > 1 {
                        a rel="prev" href={ "/ui/links?" (query.at_page(query.page - 1)) } { "Previous" }
                    }
                    span { "Page " (query.page) " of " (pages) }
                    @if query.page < pages {
                        a rel="next" href={ "/ui/links?" (query.at_page(query.page + 1)) } { "Next" }
                    }
                }
            }
        },
    )
}

/// Bars of clicks per day for the last [`CHART_DAYS`] days, as SVG drawn here (no script, no
/// library); each bar has its day and count as a tooltip and the chart a text summary.
fn chart(daily: &[Value], today: chrono::NaiveDate) -> Markup {
    let days: Vec<(chrono::NaiveDate, i64)> = (0..CHART_DAYS)
        .rev()
        .map(|back| {
            let day = today - chrono::Duration::days(back);
            let key = day.format("%Y-%m-%d").to_string();
            let n = daily
                .iter()
                .find(|d| d["date"] == key.as_str())
                .and_then(|d| d["clicks"].as_i64())
                .unwrap_or(0);
            (day, n)
        })
        .collect();
    let max = days.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let total: i64 = days.iter().map(|(_, n)| n).sum();
    let (w, h, gap) = (10i64, 100i64, 2i64);
    let width = CHART_DAYS * (w + gap);
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (width) " " (h) } preserveAspectRatio="none" role="img"
                aria-label={ "Clicks per day, last " (CHART_DAYS) " days: " (total) " in all" } {
                @for (i, (day, n)) in days.iter().enumerate() {
                    @let bar = if *n == 0 { 1 } else { (n * h / max).max(2) };
                    rect x=(i as i64 * (w + gap)) y=(h - bar) width=(w) height=(bar)
                        fill=(if *n == 0 { "#d9dce1" } else { "#0b57d0" }) {
                        title { (day.format("%Y-%m-%d")) ": " (n) " clicks" }
                    }
                }
            }
            figcaption.muted {
                "Clicks per day, last " (CHART_DAYS) " days (UTC, bots left out): " (total)
            }
        }
    }
}

/// A breakdown (`name`/`referrer`/`host` and `clicks` rows) as a small table.
fn breakdown(caption: &str, rows: &Value, key: &str) -> Markup {
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or(&[]);
    html! {
        table.breakdown {
            caption { (caption) }
            @if rows.is_empty() {
                tr { td.muted { "none yet" } }
            }
            @for r in rows {
                tr {
                    td { (r[key].as_str().unwrap_or("")) }
                    td.num { (r["clicks"].as_i64().unwrap_or(0)) }
                }
            }
        }
    }
}

/// The edit form's values: the link's own, or what was typed when an edit came back refused
/// (never a password: that field is always empty).
#[derive(Clone)]
pub struct Edit {
    pub original_url: String,
    pub title: String,
    /// Comma-separated.
    pub tags: String,
    /// As a `datetime-local` input holds it, in UTC: `2030-01-31T12:00`, or with the seconds
    /// when they are not zero (the form the browser sends back untouched).
    pub expires_at: String,
    pub max_visits: String,
    pub redirect_type: String,
}

/// The edit form's fields but the password, each also sent as it was shown, in a hidden
/// `shown_<name>` field: the edit changes only what the visitor changed (see `links::edit`).
pub const EDIT_FIELDS: [&str; 6] = [
    "original_url",
    "title",
    "tags",
    "expires_at",
    "max_visits",
    "redirect_type",
];

/// The prefix of a field holding the value its input showed.
pub const SHOWN: &str = "shown_";

impl Edit {
    pub fn of(link: &Link) -> Self {
        Self {
            original_url: link.original_url.clone(),
            title: link.title.clone().unwrap_or_default(),
            tags: link.tags.join(", "),
            expires_at: link
                .expires_at
                .map(|at| {
                    let minutes = at.format("%Y-%m-%dT%H:%M").to_string();
                    match at.second() {
                        0 => minutes,
                        s => format!("{minutes}:{s:02}"),
                    }
                })
                .unwrap_or_default(),
            max_visits: link.max_visits.map(|m| m.to_string()).unwrap_or_default(),
            redirect_type: link.redirect_type.to_string(),
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut String> {
        Some(match name {
            "original_url" => &mut self.original_url,
            "title" => &mut self.title,
            "tags" => &mut self.tags,
            "expires_at" => &mut self.expires_at,
            "max_visits" => &mut self.max_visits,
            "redirect_type" => &mut self.redirect_type,
            _ => return None,
        })
    }

    /// These values with those a post carried under `prefix` and their names, trimmed (the
    /// first of a name sent twice, as the edit reads it).
    pub fn with_posted(mut self, fields: &[(String, String)], prefix: &str) -> Self {
        for name in EDIT_FIELDS {
            let sent = fields
                .iter()
                .find(|(k, _)| k.strip_prefix(prefix) == Some(name));
            if let (Some((_, value)), Some(slot)) = (sent, self.slot(name)) {
                *slot = value.trim().to_owned();
            }
        }
        self
    }

    fn shown_fields(&self) -> [(&'static str, &str); 6] {
        [
            ("shown_original_url", &self.original_url),
            ("shown_title", &self.title),
            ("shown_tags", &self.tags),
            ("shown_expires_at", &self.expires_at),
            ("shown_max_visits", &self.max_visits),
            ("shown_redirect_type", &self.redirect_type),
        ]
    }
}

/// What a redirect status means to someone choosing one.
fn redirect_name(status: u16) -> &'static str {
    match status {
        301 => "301 Moved Permanently (browsers may keep it)",
        302 => "302 Found (the default)",
        307 => "307 Temporary Redirect (keeps the method)",
        308 => "308 Permanent Redirect (keeps the method; browsers may keep it)",
        _ => "another status",
    }
}

/// The link's settings as they are: tags, expiry, visit limit, password, redirect status.
fn settings(link: &Link) -> Markup {
    html! {
        dl.settings {
            dt { "Tags" }
            dd {
                @if link.tags.is_empty() { span.muted { "none" } }
                @for tag in &link.tags {
                    a.badge href={ "/ui/links?" (super::links::tag_query(tag)) } { (tag) } " "
                }
            }
            dt { "Expires" }
            dd {
                @match link.expires_at {
                    Some(at) => { (at.format("%Y-%m-%d %H:%M:%S")) " UTC" }
                    None => { span.muted { "never" } }
                }
            }
            dt { "Visit limit" }
            dd {
                @match link.max_visits {
                    Some(max) => { (link.visits) " of " (max) " used" }
                    None => { span.muted { "none" } }
                }
            }
            dt { "Password" }
            dd {
                @if link.has_password { "asked before the redirect" }
                @else { span.muted { "none" } }
            }
            dt { "Redirect" }
            dd { (redirect_name(link.redirect_type)) }
        }
    }
}

pub fn link(
    page: &Page,
    link: &Link,
    base: &str,
    stats: &Value,
    typed: &Edit,
    shown: &Edit,
    refusal: &Refusal,
) -> Markup {
    let marks = refusal.marks(&[
        "original_url",
        "title",
        "tags",
        "expires_at",
        "max_visits",
        "redirect_type",
        "password",
    ]);
    let short = short_url(base, link);
    let self_path = format!("/ui/links/{}", link.id);
    layout(
        page,
        &link.short_code,
        html! {
            p { a href="/ui/links" { "← My links" } }
            h1 {
                (link.short_code)
                @if !link.is_active { " " span.badge { "inactive" } }
                @if let Some(why) = ended(link) { " " span.badge { (why) } }
            }
            div.result {
                output { a href=(short) { (short) } }
                (copy_button(&short))
                p.muted {
                    @if ended(link).is_some() { "Redirected to " } @else { "Redirects to " }
                    span.target { (link.original_url) }
                }
                @if let Some(t) = &link.title { p { (t) } }
            }
            div.row {
                span {
                    (count(stats["clicks"].as_i64().unwrap_or(0), "click")) ", "
                    (count(stats["visitors"].as_i64().unwrap_or(0), "unique visitor")) ", "
                    (stats["bots"].as_i64().unwrap_or(0)) " from bots"
                }
                (state_button(page, link, &self_path))
                a href={ "/ui/links/" (link.id) "/delete" } { "Delete" }
            }
            (chart(
                stats["daily"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                chrono::Utc::now().date_naive(),
            ))
            div.breakdowns {
                (breakdown("Top referrers", &stats["referrer_hosts"], "host"))
                (breakdown("Browsers", &stats["browsers"], "name"))
                (breakdown("Devices", &stats["devices"], "name"))
            }
            h2 { "QR code" }
            img.qr src={ "/ui/links/" (link.id) "/qr?format=svg&size=192" } width="192" height="192"
                alt={ "QR code of " (short) };
            p { a href={ "/ui/links/" (link.id) "/qr?format=png&size=1024" } download={ (link.short_code) ".png" } { "Download as PNG" } }
            h2 { "Settings" }
            (settings(link))
            h2 #edit { "Edit" }
            (errors(&refusal.messages))
            form.card method="post" action={ "/ui/links/" (link.id) "/edit" } {
                (csrf_field(page))
                @for (name, value) in shown.shown_fields() {
                    input type="hidden" name=(name) value=(value);
                }
                (marks.field(Input {
                        name: "original_url",
                    label: "Long URL",
                        kind: "url",
                        value: Some(&typed.original_url),
                        required: true,
                        ..Input::default()
                }))
                (marks.field(Input {
                        name: "title",
                    label: "Title",
                        kind: "text",
                        value: Some(&typed.title),
                        ..Input::default()
                }))
                (marks.field(Input {
                        name: "tags",
                    label: "Tags",
                    hint: Some("Separated by commas; letters, digits, spaces, - _ and ."),
                        kind: "text",
                        value: Some(&typed.tags),
                        ..Input::default()
                }))
                (marks.field(Input {
                        name: "expires_at",
                    label: "Expires at",
                    hint: Some("UTC; empty for never"),
                        kind: "datetime-local",
                        value: Some(&typed.expires_at),
                        step: Some("1"),
                        ..Input::default()
                }))
                (marks.field(Input {
                        name: "max_visits",
                    label: "Visit limit",
                    hint: Some("Visits allowed in all; empty for no limit"),
                        kind: "number",
                        value: Some(&typed.max_visits),
                        min: Some("1"),
                        step: Some("1"),
                        ..Input::default()
                }))
                label for="redirect_type" {
                    "Redirect"
                    select #redirect_type name="redirect_type"
                        aria-invalid=[marks.invalid("redirect_type")]
                        aria-describedby=[marks.described("redirect_type")]
                        autofocus[marks.first("redirect_type")] {
                        @for status in kurz_common::keys::REDIRECT_TYPES {
                            option value=(status) selected[typed.redirect_type == status.to_string()] {
                                (redirect_name(status))
                            }
                        }
                    }
                }
                (marks.field(Input {
                    name: "password",
                    label: "New password",
                    hint: Some(if link.has_password {
                        "Empty keeps the one it has"
                    } else {
                        "Optional: visitors then type it before the redirect"
                    }),
                    kind: "password",
                    autocomplete: Some("new-password"),
                    ..Input::default()
                }))
                @if link.has_password {
                    label.check for="remove_password" {
                        input #remove_password type="checkbox" name="remove_password" value="on";
                        "Remove the password"
                    }
                }
                button type="submit" { "Save" }
            }
        },
    )
}

pub fn confirm_delete(page: &Page, link: &Link, base: &str) -> Markup {
    layout(
        page,
        "Delete link",
        html! {
            h1 { "Delete " (link.short_code) "?" }
            p {
                (short_url(base, link)) " will stop redirecting to "
                span.target { (link.original_url) } ". This cannot be undone."
            }
            form.card method="post" action={ "/ui/links/" (link.id) "/delete" } {
                (csrf_field(page))
                button.danger type="submit" { "Delete the link" }
            }
            p { a href={ "/ui/links/" (link.id) } { "Keep it" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_edit_takes_the_first_of_a_field_sent_twice_and_its_copy_apart() {
        let edit = Edit {
            original_url: "https://example.com/".into(),
            title: String::new(),
            tags: "kept".into(),
            expires_at: String::new(),
            max_visits: String::new(),
            redirect_type: "302".into(),
        };
        let fields: Vec<(String, String)> = [
            ("tags", " a "),
            ("tags", "b"),
            ("shown_tags", "c"),
            ("shown_redirect_type", "301"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let typed = edit.clone().with_posted(&fields, "");
        assert_eq!(
            (typed.tags.as_str(), typed.redirect_type.as_str()),
            ("a", "302")
        );
        let shown = edit.with_posted(&fields, SHOWN);
        assert_eq!(
            (shown.tags.as_str(), shown.redirect_type.as_str()),
            ("c", "301")
        );
        assert_eq!(shown.original_url, "https://example.com/");
    }

    #[test]
    fn the_chart_has_a_bar_per_day_scaled_to_the_busiest() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        let daily = [
            json!({"date": "2026-12-05", "clicks": 10}),
            json!({"date": "2026-12-04", "clicks": 5}),
            json!({"date": "2026-10-01", "clicks": 99}),
        ];
        let svg = chart(&daily, today).into_string();
        assert_eq!(svg.matches("<rect").count(), CHART_DAYS as usize);
        assert!(svg.contains("2026-12-05: 10 clicks"));
        assert!(
            svg.contains("height=\"100\""),
            "the busiest day is full height"
        );
        assert!(svg.contains("height=\"50\""), "half of it is half");
        assert!(
            svg.contains(": 15 in all"),
            "days outside the window are not counted"
        );
    }
}

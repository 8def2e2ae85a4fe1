//! Templates of "my links", a link's page and the delete confirmation.

use super::links::{ListQuery, PER_PAGE};
use super::pages::{copy_button, csrf_field, errors, layout, Page};
use crate::db::urls::Link;
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
pub struct Edit {
    pub original_url: String,
    pub title: String,
    /// Comma-separated.
    pub tags: String,
    /// As a `datetime-local` input holds it, in UTC: `2030-01-31T12:00:00`.
    pub expires_at: String,
    pub max_visits: String,
    pub redirect_type: String,
}

impl Edit {
    pub fn of(link: &Link) -> Self {
        Self {
            original_url: link.original_url.clone(),
            title: link.title.clone().unwrap_or_default(),
            tags: link.tags.join(", "),
            expires_at: link
                .expires_at
                .map(|at| at.format("%Y-%m-%dT%H:%M:%S").to_string())
                .unwrap_or_default(),
            max_visits: link.max_visits.map(|m| m.to_string()).unwrap_or_default(),
            redirect_type: link.redirect_type.to_string(),
        }
    }
}

impl Edit {
    /// These values with those of the form's `fields` that a post carried, as typed.
    pub fn with_sent(mut self, fields: &[(String, String)]) -> Self {
        for (name, value) in fields {
            let slot = match name.as_str() {
                "original_url" => &mut self.original_url,
                "title" => &mut self.title,
                "tags" => &mut self.tags,
                "expires_at" => &mut self.expires_at,
                "max_visits" => &mut self.max_visits,
                "redirect_type" => &mut self.redirect_type,
                _ => continue,
            };
            *slot = value.trim().to_owned();
        }
        self
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

/// The attributes of an input whose field an edit was refused for: marked invalid, pointing
/// at the messages, and the first of them focused, so a screen reader lands on what to fix.
struct Refused<'a> {
    fields: &'a [String],
}

impl Refused<'_> {
    fn invalid(&self, name: &str) -> Option<&'static str> {
        self.fields.iter().any(|f| f == name).then_some("true")
    }

    fn described(&self, name: &str) -> Option<&'static str> {
        self.invalid(name).map(|_| "edit-errors")
    }

    /// The first refused field in the form's order.
    fn first(&self, name: &str) -> bool {
        let order = [
            "original_url",
            "title",
            "tags",
            "expires_at",
            "max_visits",
            "redirect_type",
            "password",
        ];
        order
            .into_iter()
            .find(|f| self.fields.iter().any(|r| r == f))
            == Some(name)
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
    problems: &[String],
    refused: &[String],
) -> Markup {
    let refused = Refused { fields: refused };
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
            div #edit-errors { (errors(problems)) }
            form.card method="post" action={ "/ui/links/" (link.id) "/edit" } {
                (csrf_field(page))
                label for="original_url" {
                    "Long URL"
                    input #original_url type="url" name="original_url" required
                        value=(typed.original_url)
                        aria-invalid=[refused.invalid("original_url")]
                        aria-describedby=[refused.described("original_url")]
                        autofocus[refused.first("original_url")];
                }
                label for="title" {
                    "Title"
                    input #title type="text" name="title" value=(typed.title)
                        aria-invalid=[refused.invalid("title")]
                        aria-describedby=[refused.described("title")]
                        autofocus[refused.first("title")];
                }
                label for="tags" {
                    "Tags"
                    span.hint { "Separated by commas; letters, digits, spaces, - _ and ." }
                    input #tags type="text" name="tags" value=(typed.tags)
                        aria-invalid=[refused.invalid("tags")]
                        aria-describedby=[refused.described("tags")]
                        autofocus[refused.first("tags")];
                }
                label for="expires_at" {
                    "Expires at"
                    span.hint { "UTC; empty for never" }
                    input #expires_at type="datetime-local" step="1" name="expires_at"
                        value=(typed.expires_at)
                        aria-invalid=[refused.invalid("expires_at")]
                        aria-describedby=[refused.described("expires_at")]
                        autofocus[refused.first("expires_at")];
                }
                label for="max_visits" {
                    "Visit limit"
                    span.hint { "Visits allowed in all; empty for no limit" }
                    input #max_visits type="number" min="1" step="1" name="max_visits"
                        value=(typed.max_visits)
                        aria-invalid=[refused.invalid("max_visits")]
                        aria-describedby=[refused.described("max_visits")]
                        autofocus[refused.first("max_visits")];
                }
                label for="redirect_type" {
                    "Redirect"
                    select #redirect_type name="redirect_type"
                        aria-invalid=[refused.invalid("redirect_type")]
                        aria-describedby=[refused.described("redirect_type")]
                        autofocus[refused.first("redirect_type")] {
                        @for status in kurz_common::keys::REDIRECT_TYPES {
                            option value=(status) selected[typed.redirect_type == status.to_string()] {
                                (redirect_name(status))
                            }
                        }
                    }
                }
                label for="password" {
                    "New password"
                    span.hint {
                        @if link.has_password { "Empty keeps the one it has" }
                        @else { "Optional: visitors then type it before the redirect" }
                    }
                    input #password type="password" name="password" autocomplete="new-password"
                        aria-invalid=[refused.invalid("password")]
                        aria-describedby=[refused.described("password")]
                        autofocus[refused.first("password")];
                }
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

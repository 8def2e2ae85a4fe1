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

pub fn link(
    page: &Page,
    link: &Link,
    base: &str,
    stats: &Value,
    typed: (&str, &str),
    problems: &[String],
) -> Markup {
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
            h2 { "Edit" }
            (errors(problems))
            form.card method="post" action={ "/ui/links/" (link.id) "/edit" } {
                (csrf_field(page))
                label for="original_url" {
                    "Long URL"
                    input #original_url type="url" name="original_url" required value=(typed.0);
                }
                label for="title" {
                    "Title"
                    input #title type="text" name="title" value=(typed.1);
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

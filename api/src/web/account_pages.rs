//! Templates of the API-keys page and the admins' list of users.

use super::account::USERS_PER_PAGE;
use super::pages::{csrf_field, errors, layout, Page};
use crate::db::api_keys::ApiKey;
use crate::db::users::User;
use maud::{html, Markup};

/// `keys`: `None` when they could not be listed; `typed`: the name a refused make came with, to
/// show again.
pub fn keys(
    page: &Page,
    keys: Option<&[ApiKey]>,
    made: Option<&str>,
    typed: &str,
    problems: &[String],
) -> Markup {
    layout(
        page,
        "API keys",
        html! {
            h1 { "API keys" }
            p.muted { "A key acts as you on the API: send it as " code { "Authorization: Bearer <key>" } "." }
            @if let Some(key) = made {
                div.result role="status" {
                    p { "Your new key. Copy it now: it is not shown again." }
                    output #new_key { code { (key) } }
                    (super::pages::copy_button(key))
                }
            }
            (errors(problems))
            form.card method="post" action="/ui/keys" {
                (csrf_field(page))
                // One per page shown: the form sent twice (a double click, a reload of the
                // answer) makes one key.
                input type="hidden" name=(super::FORM_ID_FIELD) value=(kurz_common::clicks::new_id());
                label for="name" {
                    "Name"
                    span.hint { "What it is for, up to 100 characters" }
                    input #name type="text" name="name" maxlength="100" required value=(typed);
                }
                button type="submit" { "Make a key" }
            }
            @if let Some(keys) = keys.filter(|k| !k.is_empty()) {
                table.breakdown {
                    caption { "Your keys" }
                    tr { th { "Name" } th { "Starts with" } th { "Made" } th { "Last used" } th {} }
                    @for k in keys {
                        tr {
                            td { (k.name) }
                            td { code { (k.prefix) "…" } }
                            td { (k.created_at.format("%Y-%m-%d")) }
                            td { (k.last_used_at.map_or("never".to_owned(), |t| t.format("%Y-%m-%d").to_string())) }
                            td {
                                a href={ "/ui/keys/" (k.id) "/revoke" } aria-label={ "Revoke key " (k.name) } { "Revoke" }
                            }
                        }
                    }
                }
            } @else if keys.is_some() {
                p.muted { "No keys yet." }
            } @else {
                p.muted { "Your keys could not be listed just now: reload the page to see them." }
            }
        },
    )
}

pub fn confirm_revoke(page: &Page, key: &ApiKey) -> Markup {
    layout(
        page,
        "Revoke key",
        html! {
            h1 { "Revoke the key " (key.name) "?" }
            p {
                "Every program that sends the key starting with " code { (key.prefix) "…" }
                " is refused from then on. This cannot be undone: a program that still needs a key gets a new one."
            }
            form.card method="post" action={ "/ui/keys/" (key.id) "/revoke" } {
                (csrf_field(page))
                button.danger type="submit" { "Revoke the key" }
            }
            p { a href="/ui/keys" { "Keep it" } }
        },
    )
}

pub fn users(page: &Page, users: &[User], total: i64, at: i64) -> Markup {
    let pages = ((total + USERS_PER_PAGE - 1) / USERS_PER_PAGE).max(1);
    layout(
        page,
        "Users",
        html! {
            h1 { "Users" }
            p.muted { (total) " in all" }
            table.breakdown {
                tr { th { "Id" } th { "Username" } th { "Email" } th { "Joined" } }
                @for u in users {
                    tr {
                        td.num { (u.id) }
                        td { (u.username) }
                        td { (u.email) }
                        td { (u.created_at.format("%Y-%m-%d")) }
                    }
                }
            }
            @if pages > 1 {
                nav.pages aria-label="Pages" {
                    @if at > 1 { a rel="prev" href={ "/ui/users?page=" (at - 1) } { "Previous" } }
                    span { "Page " (at) " of " (pages) }
                    @if at < pages { a rel="next" href={ "/ui/users?page=" (at + 1) } { "Next" } }
                }
            }
        },
    )
}

//! The pages, as maud templates: compiled into the binary, and every value interpolated with
//! `(…)` is escaped, so a link's target or a user's name always shows as text.

use super::csrf;
use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};

/// What every page shows around its content.
pub struct Page<'a> {
    /// The logged-in user's name.
    pub user: Option<&'a str>,
    /// The logged-in user's id.
    pub user_id: Option<i64>,
    pub csrf: &'a str,
    /// `auth.mode: open`: anonymous visitors may shorten.
    pub anonymous_may_shorten: bool,
    /// The user is an admin (`auth.admins`): the users page is theirs.
    pub admin: bool,
}

/// The shorten form's values, kept when it comes back with errors.
#[derive(Default)]
pub struct Form {
    pub original_url: String,
    pub short_code: String,
    /// The user the form was first shown to (its `as` field), when no one is logged in now:
    /// sent again it is refused again, until they log in, rather than made ownerless.
    pub signed_as: String,
}

pub(super) fn csrf_field(page: &Page) -> Markup {
    html! { input type="hidden" name=(csrf::FIELD) value=(page.csrf); }
}

pub(super) fn layout(page: &Page, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · kurz" }
                link rel="stylesheet" href=(super::stylesheet());
                script src=(super::script()) defer {}
            }
            body {
                header {
                    a.brand href="/" { "kurz" }
                    nav aria-label="Account" {
                        @if let Some(user) = page.user {
                            a href="/ui/links" { "My links" }
                            a href="/ui/keys" { "API keys" }
                            @if page.admin { a href="/ui/users" { "Users" } }
                            span { "Logged in as " strong { (user) } }
                            form method="post" action="/logout" {
                                (csrf_field(page))
                                button.link type="submit" { "Log out" }
                            }
                        } @else {
                            a href="/login" { "Log in" }
                            a href="/register" { "Sign up" }
                        }
                    }
                }
                main { (content) }
                footer { "kurz — short links, fast." }
            }
        }
    }
}

/// A button that copies `text`: hidden, and shown by the script (app.js) only where it runs.
pub(super) fn copy_button(text: &str) -> Markup {
    html! { button.copy type="button" data-copy=(text) hidden { "Copy" } }
}

/// What a refused form post comes back with: the messages, and the fields they are about.
#[derive(Default)]
pub struct Refusal {
    pub messages: Vec<String>,
    /// The API's names of the refused fields (`original_url`, …).
    pub fields: Vec<String>,
}

impl Refusal {
    /// The marks of a form whose inputs come in `order`.
    pub(super) fn marks<'a>(&'a self, order: &[&'a str]) -> Marks<'a> {
        let focus = order
            .iter()
            .copied()
            .find(|name| self.fields.iter().any(|f| f == name));
        Marks {
            fields: &self.fields,
            focus,
        }
    }
}

/// The attributes of a refused form's inputs: each refused one marked invalid and described
/// by the messages ([`errors`]), the first of them in the form's order focused, so a screen
/// reader lands on what to fix.
pub(super) struct Marks<'a> {
    fields: &'a [String],
    focus: Option<&'a str>,
}

impl Marks<'_> {
    pub(super) fn invalid(&self, name: &str) -> Option<&'static str> {
        self.fields.iter().any(|f| f == name).then_some("true")
    }

    pub(super) fn described(&self, name: &str) -> Option<&'static str> {
        self.invalid(name).map(|_| ERRORS_ID)
    }

    pub(super) fn first(&self, name: &str) -> bool {
        self.focus == Some(name)
    }

    /// `input` in its label, marked if refused: the label's `for` is the input's id by
    /// construction.
    pub(super) fn field(&self, input: Input) -> Markup {
        let name = input.name;
        html! {
            label for=(name) {
                (input.label)
                @if let Some(hint) = input.hint { span.hint { (hint) } }
                input id=(name) type=(input.kind) name=(name) value=[input.value]
                    required[input.required] placeholder=[input.placeholder]
                    autocomplete=[input.autocomplete] spellcheck=[input.spellcheck]
                    min=[input.min] step=[input.step] minlength=[input.minlength]
                    aria-invalid=[self.invalid(name)] aria-describedby=[self.described(name)]
                    autofocus[self.first(name)];
            }
        }
    }
}

/// An input of a form that marks its refused fields ([`Marks::field`]); `name` is its id too.
#[derive(Default)]
pub(super) struct Input<'a> {
    pub name: &'a str,
    pub label: &'a str,
    /// Below the label, in smaller type.
    pub hint: Option<&'a str>,
    /// Its `type`.
    pub kind: &'a str,
    /// `None` for a password, never written back into a page.
    pub value: Option<&'a str>,
    pub required: bool,
    pub placeholder: Option<&'a str>,
    pub autocomplete: Option<&'a str>,
    pub spellcheck: Option<&'a str>,
    pub min: Option<&'a str>,
    pub step: Option<&'a str>,
    pub minlength: Option<&'a str>,
}

/// The id of a page's messages ([`errors`]), which refused inputs point at.
const ERRORS_ID: &str = "errors";

pub(super) fn errors(list: &[String]) -> Markup {
    html! {
        @if !list.is_empty() {
            div.errors id=(ERRORS_ID) role="alert" {
                @if list.len() == 1 { p { (list[0]) } } @else {
                    ul { @for e in list { li { (e) } } }
                }
            }
        }
    }
}

/// The home page: the shorten form, or an invitation to log in where anonymous use is off.
pub fn home(page: &Page, form: &Form, refusal: &Refusal) -> Markup {
    let may_shorten = page.user.is_some() || page.anonymous_may_shorten;
    let marks = refusal.marks(&["original_url", "short_code"]);
    layout(
        page,
        "Shorten a link",
        html! {
            h1 { "Shorten a link" }
            @if may_shorten {
                (errors(&refusal.messages))
                form.card method="post" action="/ui/shorten" {
                    (csrf_field(page))
                    // Whose form this is: a post after the session ended is not made ownerless.
                    @let signed_as = page
                        .user_id
                        .map_or_else(|| form.signed_as.clone(), |id| id.to_string());
                    @if !signed_as.is_empty() {
                        input type="hidden" name=(super::SIGNED_AS_FIELD) value=(signed_as);
                    }
                    // One per page shown: the same form sent twice (a double click, a reload of
                    // the answer) makes one link.
                    input type="hidden" name=(super::FORM_ID_FIELD)
                        value=(kurz_common::clicks::new_id());
                    (marks.field(Input {
                            name: "original_url",
                        label: "Long URL",
                            kind: "url",
                            value: Some(&form.original_url),
                            required: true,
                            placeholder: Some("https://example.com/a/long/path"),
                            ..Input::default()
                    }))
                    (marks.field(Input {
                            name: "short_code",
                        label: "Custom code",
                        hint: Some("Optional: 3–64 letters, digits, - or _"),
                            kind: "text",
                            value: Some(&form.short_code),
                            autocomplete: Some("off"),
                            spellcheck: Some("false"),
                            ..Input::default()
                    }))
                    button type="submit" { "Shorten" }
                }
            } @else {
                p {
                    "Links on this kurz belong to accounts. "
                    a href="/login" { "Log in" } " or " a href="/register" { "sign up" }
                    " to shorten one."
                }
            }
        },
    )
}

/// The new link.
pub fn created(page: &Page, short_url: &str, target: &str) -> Markup {
    layout(
        page,
        "Link created",
        html! {
            h1 { "Your short link" }
            div.result {
                output #short_url { a href=(short_url) { (short_url) } }
                (copy_button(short_url))
                p.muted { "Redirects to " span #target { (target) } }
            }
            p { a href="/" { "Shorten another link" } }
        },
    )
}

/// The log-in page; `next` the page of ours to go back to once logged in.
pub fn login(page: &Page, account: &str, next: Option<&str>, problems: &[String]) -> Markup {
    layout(
        page,
        "Log in",
        html! {
            h1 { "Log in" }
            (errors(problems))
            form.card method="post" action="/login" {
                (csrf_field(page))
                @if let Some(next) = next {
                    input type="hidden" name=(super::NEXT_FIELD) value=(next);
                }
                label for="account" {
                    "Username or email"
                    input #account type="text" name="account" required value=(account)
                        autocomplete="username";
                }
                label for="password" {
                    "Password"
                    input #password type="password" name="password" required
                        autocomplete="current-password";
                }
                button type="submit" { "Log in" }
            }
            p { "No account yet? " a href="/register" { "Sign up" } }
        },
    )
}

pub fn register(page: &Page, username: &str, email: &str, refusal: &Refusal) -> Markup {
    let marks = refusal.marks(&["username", "email", "password"]);
    layout(
        page,
        "Sign up",
        html! {
            h1 { "Sign up" }
            (errors(&refusal.messages))
            form.card method="post" action="/register" {
                (csrf_field(page))
                (marks.field(Input {
                        name: "username",
                    label: "Username",
                        kind: "text",
                        value: Some(username),
                        required: true,
                        autocomplete: Some("username"),
                        ..Input::default()
                }))
                (marks.field(Input {
                        name: "email",
                    label: "Email",
                        kind: "email",
                        value: Some(email),
                        required: true,
                        autocomplete: Some("email"),
                        ..Input::default()
                }))
                (marks.field(Input {
                        name: "password",
                    label: "Password",
                    hint: Some("At least 8 characters"),
                        kind: "password",
                        required: true,
                        minlength: Some("8"),
                        autocomplete: Some("new-password"),
                        ..Input::default()
                }))
                button type="submit" { "Sign up" }
            }
            p { "Have an account? " a href="/login" { "Log in" } }
        },
    )
}

/// An error with nothing to fill in again.
pub fn problem(page: &Page, status: StatusCode, problems: &[String]) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    layout(
        page,
        title,
        html! {
            h1 { (title) }
            (errors(problems))
            p { a href="/" { "Back to the home page" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Page<'static> {
        Page {
            user: Some("<b>ada</b>"),
            user_id: Some(1),
            csrf: "tok",
            anonymous_may_shorten: false,
            admin: false,
        }
    }

    #[test]
    fn values_are_escaped_everywhere() {
        let html = created(
            &page(),
            "http://k/abc",
            "https://x.example/?q=<script>alert(1)</script>",
        )
        .into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;ada&lt;/b&gt;"));
        let form = Form {
            original_url: "\"><script>x</script>".into(),
            short_code: String::new(),
            signed_as: String::new(),
        };
        let refusal = Refusal {
            messages: vec!["bad <i>".into()],
            fields: vec!["original_url".into()],
        };
        let html = home(&page(), &form, &refusal).into_string();
        assert!(
            !html.contains("<script>") && !html.contains("<i>"),
            "{html}"
        );
    }

    #[test]
    fn every_form_carries_the_csrf_token_and_every_input_a_label() {
        let mut p = page();
        p.anonymous_may_shorten = true;
        for html in [
            home(&p, &Form::default(), &Refusal::default()).into_string(),
            login(&p, "", None, &[]).into_string(),
            register(&p, "", "", &Refusal::default()).into_string(),
        ] {
            let forms = html.matches("<form").count();
            assert!(forms >= 2, "the page's form and the logout form");
            assert_eq!(html.matches("name=\"csrf\" value=\"tok\"").count(), forms);
            for id in html.split("<input id=\"").skip(1) {
                let id = &id[..id.find('"').unwrap()];
                assert!(
                    html.contains(&format!("<label for=\"{id}\"")),
                    "{id} unlabelled"
                );
            }
        }
    }
}

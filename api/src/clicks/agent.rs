//! What a click's user agent says: whether a bot or link-preview fetcher made it (still
//! redirected, but left out of the stats unless asked), and the browser, OS and device class.
//!
//! Decided when the click is stored, by the API (never on the redirect path): the edge's
//! per-request cost stays the same. Parsing costs a few microseconds, and a batch of clicks
//! mostly repeats a few agents, so results are kept in a small table per process.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Agents remembered; the table is emptied when full (cheaper than an LRU, and a stream of
/// ever-new agents is what a bot sends anyway).
const REMEMBERED: usize = 4096;

/// What the stats group clicks by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub is_bot: bool,
    /// `Chrome`, `Firefox`, `Safari`, …; `unknown` when the parser cannot tell.
    pub browser: String,
    /// `Windows 10`, `Mac OSX`, `iPhone`, `Android`, `Linux`, …; `unknown` likewise.
    pub os: String,
    /// `desktop`, `mobile`, `bot` or `other`.
    pub device: &'static str,
}

struct Parser {
    bots: isbot::Bots,
    woothee: woothee::parser::Parser,
    seen: Mutex<HashMap<String, Agent>>,
}

/// Fetchers the crate's list misses: WhatsApp's link preview (its app has no browser of its
/// own, so the agent is always the fetcher).
const MORE_BOTS: &[&str] = &["^WhatsApp/"];

static PARSER: LazyLock<Parser> = LazyLock::new(|| Parser {
    bots: {
        let mut bots = isbot::Bots::default();
        bots.append(MORE_BOTS);
        bots
    },
    woothee: woothee::parser::Parser::new(),
    seen: Mutex::new(HashMap::new()),
});

/// The agent of `user_agent`. An empty one is not taken for a bot: nothing says it is one, and
/// privacy tools strip the header too.
pub fn classify(user_agent: &str) -> Agent {
    let parser = &*PARSER;
    if let Some(known) = parser.seen.lock().expect("agent table").get(user_agent) {
        return known.clone();
    }
    let parsed = parser.woothee.parse(user_agent);
    let name = |v: Option<&str>| match v {
        Some(v) if !v.is_empty() && v != "UNKNOWN" => v.to_owned(),
        _ => "unknown".to_owned(),
    };
    let category = parsed.as_ref().map_or("", |p| p.category);
    let is_bot = category == "crawler" || parser.bots.is_bot(user_agent);
    let agent = Agent {
        is_bot,
        browser: name(parsed.as_ref().map(|p| p.name)),
        os: name(parsed.as_ref().map(|p| p.os)),
        device: match category {
            _ if is_bot => "bot",
            "pc" => "desktop",
            "smartphone" | "mobilephone" => "mobile",
            _ => "other",
        },
    };
    let mut seen = parser.seen.lock().expect("agent table");
    if seen.len() >= REMEMBERED {
        seen.clear();
    }
    seen.insert(user_agent.to_owned(), agent.clone());
    agent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_preview_fetchers_and_tools_are_bots() {
        for ua in [
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Twitterbot/1.0",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "WhatsApp/2.23.20.0",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "curl/8.5.0",
            "Wget/1.21.4",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ] {
            let agent = classify(ua);
            assert!(agent.is_bot, "{ua:?}");
            assert_eq!(agent.device, "bot", "{ua:?}");
        }
    }

    #[test]
    fn browsers_are_people_with_their_browser_os_and_device() {
        let desktop = classify(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        );
        assert!(!desktop.is_bot);
        assert_eq!(desktop.browser, "Chrome");
        assert_eq!(desktop.os, "Windows 10");
        assert_eq!(desktop.device, "desktop");
        let phone = classify(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        );
        assert!(!phone.is_bot);
        assert_eq!(phone.browser, "Safari");
        assert_eq!(phone.os, "iPhone");
        assert_eq!(phone.device, "mobile");
        let firefox = classify(
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        );
        assert_eq!(
            (firefox.is_bot, firefox.browser.as_str()),
            (false, "Firefox")
        );
        // Remembered: the same answer again.
        assert_eq!(classify("curl/8.5.0"), classify("curl/8.5.0"));
        assert!(!classify("").is_bot);
        let odd = classify("SomethingNobodyKnows/0.1");
        assert_eq!(
            (odd.browser.as_str(), odd.os.as_str()),
            ("unknown", "unknown")
        );
    }
}

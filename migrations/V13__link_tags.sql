-- Tags of a link: short normalised strings (lower case, trimmed), a few per link. The second
-- index serves `GET /urls?tag=` and the counts of `GET /tags`.
CREATE TABLE link_tags (
    url_id BIGINT NOT NULL REFERENCES urls (id),
    tag    TEXT   NOT NULL,
    PRIMARY KEY (url_id, tag)
);
CREATE INDEX link_tags_tag_idx ON link_tags (tag, url_id);

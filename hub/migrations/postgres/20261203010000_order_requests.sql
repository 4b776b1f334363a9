-- The one-time key of each order request (the order form's hidden field, or a
-- client's request_id): a form sent twice (a double click, a reload, a retry) finds
-- the order it placed the first time instead of placing another.
CREATE TABLE order_requests (
    physician  TEXT NOT NULL REFERENCES users (username),
    request_id UUID NOT NULL,
    order_id   UUID NOT NULL REFERENCES orders (order_id),
    PRIMARY KEY (physician, request_id)
);

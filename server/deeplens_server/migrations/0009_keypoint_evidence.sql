-- Geometric verification's evidence on a link (0 when it was not run): RANSAC inliers and the share of the
-- aligned overlap whose pixels agree.
ALTER TABLE duplicate_links
    ADD COLUMN keypoint_inliers integer NOT NULL DEFAULT 0,
    ADD COLUMN keypoint_agreement real NOT NULL DEFAULT 0;

-- EXIF facts and the thumbnail sizes kept for each image.
ALTER TABLE images
    ADD COLUMN exif jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN thumbnails integer[] NOT NULL DEFAULT '{}';

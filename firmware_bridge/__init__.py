"""Node side of the shelf-controller serial link: protocol, driver, simulator, flashing."""

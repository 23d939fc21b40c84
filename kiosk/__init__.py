"""The enrolment station (check-in kiosk or counter camera): boarding pass + identity reference
-> live capture -> 1:1 against the reference -> enrolment at the central for the flight and the
airport's security checkpoint. It composes vision, devices and sync like gate/ does; neither
the lane nor the central imports it."""

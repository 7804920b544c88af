"""The argument types of the airline tools, named and shaped as τ²'s, so a τ² call validates.

Nested objects ignore keys they do not know, as τ²'s own models do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FlightType = Literal["round_trip", "one_way"]
CabinClass = Literal["business", "economy", "basic_economy"]
Insurance = Literal["yes", "no"]


class FlightInfo(BaseModel):
    flight_number: str = Field(description="Flight number, such as 'HAT001'.")
    date: str = Field(description="The flight's date as YYYY-MM-DD, such as '2024-05-01'.")


class Passenger(BaseModel):
    first_name: str = Field(description="The passenger's first name.")
    last_name: str = Field(description="The passenger's last name.")
    dob: str = Field(description="The passenger's date of birth as YYYY-MM-DD.")


class Payment(BaseModel):
    payment_id: str = Field(description="A payment method id from the user's profile.")
    amount: int = Field(description="How much to pay with it, in whole dollars.")

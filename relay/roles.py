"""Roles of professionals and kinds of teams (the users' vocabulary)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    NURSE = "nurse"
    PHYSICIAN = "physician"
    SPECIALIST = "specialist"
    COORDINATOR = "coordinator"
    ADMIN = "admin"


class TeamKind(StrEnum):
    MSP = "msp"  # maison de santé pluriprofessionnelle
    CPTS = "cpts"  # communauté professionnelle territoriale de santé
    SERVICE = "service"  # hospital service
    SPECIALTY_POOL = "specialty_pool"  # e.g. the CPTS's dermatologists, taking cases in turn


ROLE_LABELS_FR = {
    Role.NURSE: "Infirmier·e",
    Role.PHYSICIAN: "Médecin",
    Role.SPECIALIST: "Médecin spécialiste",
    Role.COORDINATOR: "Coordinateur·rice",
    Role.ADMIN: "Administrateur·rice",
}

TEAM_KIND_LABELS_FR = {
    TeamKind.MSP: "Maison de santé",
    TeamKind.CPTS: "CPTS",
    TeamKind.SERVICE: "Service hospitalier",
    TeamKind.SPECIALTY_POOL: "Équipe de spécialité",
}

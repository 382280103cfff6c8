//! Who may do what: tokens, memberships, the principal investigator, the agencies' credential.

use std::time::Duration;

use grantmesh_proto::v1::*;
use tonic::Code;

use super::*;
use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

#[tokio::test]
async fn authentication_and_permissions_are_enforced() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let (_, outsider_token) = mesh.researcher("mallory").await;
    let (member, member_token) = mesh.researcher("grace").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut college = mesh.college(0).await;
    join(
        &mesh,
        &mut college,
        &account,
        &pi_token,
        (&member, &member_token),
    )
    .await;

    // No token, a forged token.
    let bare = tonic::Request::new(GetAccountRequest {
        account_id: account.clone(),
    });
    assert_status(
        college.get_account(bare).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account.clone(),
                },
                "not-a-token",
            ))
            .await,
        Code::Unauthenticated,
        "invalid",
    );
    let forged = grantmesh_auth::Keys::signing(
        grantmesh_auth::TokenKeyPair::generate()
            .private_pem
            .as_bytes(),
        Duration::from_secs(60),
    )
    .unwrap()
    .researcher_token(pi.parse().unwrap(), Uuid::new_v4())
    .unwrap()
    .0;
    assert_status(
        college.withdraw(withdraw(&account, 1, "k", &forged)).await,
        Code::Unauthenticated,
        "invalid",
    );
    let mut agency = mesh.agency().await;
    let proposal = SubmitProposalRequest {
        title: "t".into(),
        description: String::new(),
        requested_amount_minor: 400_000,
        duration_days: 1,
        idempotency_key: "k".into(),
    };
    assert_status(
        agency.submit_proposal(tonic::Request::new(proposal)).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        college
            .login(LoginRequest {
                email: "nobody@university.edu".into(),
                password: "orbital kettle lantern".into(),
            })
            .await,
        Code::Unauthenticated,
        "wrong",
    );

    // Someone else's account answers exactly as an id that exists nowhere:
    // an outsider cannot tell accounts from random ids.
    let nowhere = Uuid::new_v4().to_string();
    for id in [&account, &nowhere] {
        let asked = |status: Status| status.message().replace(id.as_str(), "ID");
        let shown = college
            .get_account(authed(
                GetAccountRequest {
                    account_id: id.clone(),
                },
                &outsider_token,
            ))
            .await
            .unwrap_err();
        let withdrawn = college
            .withdraw(withdraw(id, 1, "k", &outsider_token))
            .await
            .unwrap_err();
        let listed = college
            .list_transactions(authed(
                ListTransactionsRequest {
                    account_id: id.clone(),
                    ..Default::default()
                },
                &outsider_token,
            ))
            .await
            .unwrap_err();
        let invited = college
            .add_member(authed(
                AddMemberRequest {
                    account_id: id.clone(),
                    email: "x@university.edu".into(),
                },
                &outsider_token,
            ))
            .await
            .unwrap_err();
        for status in [shown, withdrawn, listed, invited] {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert_eq!(asked(status), "account ID does not exist");
        }
    }
    // Members may not manage membership; only the PI may.
    assert_status(
        college
            .add_member(authed(
                AddMemberRequest {
                    account_id: account.clone(),
                    email: "x@university.edu".into(),
                },
                &member_token,
            ))
            .await,
        Code::PermissionDenied,
        "principal investigator",
    );
    assert_status(
        college
            .remove_member(authed(
                RemoveMemberRequest {
                    account_id: account.clone(),
                    researcher_id: pi.clone(),
                },
                &pi_token,
            ))
            .await,
        Code::FailedPrecondition,
        "cannot be removed",
    );
    // Only an agency opens accounts.
    let open = OpenAccountRequest {
        proposal_id: "p".into(),
        agency: "nsf".into(),
        principal_investigator_id: pi.clone(),
        title: "t".into(),
        award_minor: 1,
        duration_days: 1,
        currency: "USD".into(),
    };
    // A researcher's token is no agency's certificate.
    assert_status(
        college.open_account(authed(open.clone(), &pi_token)).await,
        Code::Unauthenticated,
        "needs a funding agency's mesh certificate",
    );
    assert_status(
        college.open_account(tonic::Request::new(open)).await,
        Code::Unauthenticated,
        "needs a funding agency's mesh certificate",
    );
    // And another researcher's proposal is not yours.
    let mine = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Mine".into(),
                description: String::new(),
                requested_amount_minor: 400_000,
                duration_days: 1,
                idempotency_key: "k".into(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        agency
            .get_proposal(authed(
                GetProposalRequest {
                    proposal_id: mine.proposal_id,
                },
                &outsider_token,
            ))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_eq!(mesh.check_invariants(&account).await, (100_000, 0, 0));
}

#[tokio::test]
async fn password_guessing_against_one_email_is_held_to_a_rate() {
    let mesh = Mesh::start(DAY).await;
    let mut college = mesh.college(0).await;
    let guess = |email: &str| LoginRequest {
        email: email.into(),
        password: "not the password".into(),
    };
    for _ in 0..grantmesh_college::LOGIN_ATTEMPTS_PER_MINUTE {
        let wrong = college.login(guess("victim@uni.edu")).await.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    }
    let held = college.login(guess("victim@uni.edu")).await.unwrap_err();
    assert_eq!(held.code(), Code::ResourceExhausted, "{held:?}");
    assert!(
        held.message().contains("too many login attempts"),
        "{held:?}"
    );
    // Another email is not held back.
    let other = college.login(guess("someone@uni.edu")).await.unwrap_err();
    assert_eq!(other.code(), Code::Unauthenticated, "{other:?}");
}

/// Issue 19's lock-out: a stranger's 100 wrong passwords for an email, from
/// one address, do not keep the owner out when they log in from another.
#[tokio::test]
async fn a_strangers_wrong_passwords_do_not_lock_the_owner_out() {
    let mesh = Mesh::start(DAY).await;
    let mut college = mesh.college(0).await;
    let email = format!("owner-{}@uni.edu", uuid::Uuid::new_v4().simple());
    crate::support::sign_up(&mut college, "Owner", &email, "correct horse battery").await;
    let server: std::net::SocketAddr = mesh.colleges[0]
        .url
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let stranger = crate::support::tls::channel_from(server, "127.0.0.2".parse().unwrap(), None)
        .await
        .unwrap();
    let mut stranger = grantmesh_proto::CollegeClient::new(stranger);
    let mut held = 0;
    for _ in 0..100 {
        let wrong = stranger
            .login(LoginRequest {
                email: email.clone(),
                password: "not the password".into(),
            })
            .await
            .unwrap_err();
        held += usize::from(wrong.code() == Code::ResourceExhausted);
    }
    assert!(
        held >= 80,
        "the stranger is held to its rate ({held} of 100 held)"
    );
    // The owner, from this test's own address, gets in at once.
    let owner = college
        .login(LoginRequest {
            email,
            password: "correct horse battery".into(),
        })
        .await
        .expect("the owner is not locked out by a stranger's failures");
    assert!(!owner.into_inner().token.is_empty());
}

/// The median of some durations.
fn median(mut samples: Vec<std::time::Duration>) -> std::time::Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn signing_up_with_a_taken_email_looks_like_a_new_sign_up_and_changes_nothing() {
    let mesh = Mesh::start(DAY).await;
    let (ada, _) = mesh.researcher("ada").await;
    let taken = student_email_of(&mesh, &ada).await;
    let mut college = mesh.college(0).await;
    let sign_up = |email: &str| RegisterResearcherRequest {
        name: "Mallory".into(),
        email: email.into(),
        password: "quartz heron battery staple".into(),
    };

    // The same answer, in the same shape.
    let fresh = format!("fresh-{}@university.edu", uuid::Uuid::new_v4().simple());
    let new = college.register_researcher(sign_up(&fresh)).await.unwrap();
    let again = college.register_researcher(sign_up(&taken)).await.unwrap();
    let (new, again) = (new.into_inner(), again.into_inner());
    assert_eq!(
        (new.researcher_id.as_str(), new.name.as_str()),
        ("", "Mallory")
    );
    assert_eq!(
        (
            again.researcher_id.as_str(),
            again.name.as_str(),
            again.email.as_str()
        ),
        ("", "Mallory", taken.as_str())
    );

    // The same work: medians of a few calls each, within a loose bound
    // (both hash the password; before, a taken email answered without it).
    let mut fresh_times = Vec::new();
    let mut taken_times = Vec::new();
    for _ in 0..5 {
        let email = format!("fresh-{}@university.edu", uuid::Uuid::new_v4().simple());
        let started = std::time::Instant::now();
        college.register_researcher(sign_up(&email)).await.unwrap();
        fresh_times.push(started.elapsed());
        let started = std::time::Instant::now();
        college.register_researcher(sign_up(&taken)).await.unwrap();
        taken_times.push(started.elapsed());
    }
    let (fresh_median, taken_median) = (median(fresh_times), median(taken_times));
    eprintln!("sign-up medians: new email {fresh_median:?}, taken email {taken_median:?}");
    let (low, high) = if fresh_median < taken_median {
        (fresh_median, taken_median)
    } else {
        (taken_median, fresh_median)
    };
    assert!(
        high < low * 3,
        "a taken email answers in {taken_median:?}, a new one in {fresh_median:?}"
    );

    // Ada's account is as it was: her name, her password, not Mallory's.
    let row = mesh
        .db
        .client()
        .await
        .query_one(
            "SELECT name, (SELECT count(*) FROM researchers WHERE email = $1) FROM researchers WHERE email = $1",
            &[&taken],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("ada".into(), 1)
    );
    let login = |password: &str| LoginRequest {
        email: taken.clone(),
        password: password.into(),
    };
    college
        .login(login("correct horse battery"))
        .await
        .expect("her own password still logs in");
    assert_status(
        college.login(login("quartz heron battery staple")).await,
        Code::Unauthenticated,
        "wrong",
    );
}

#[tokio::test]
async fn a_peer_past_its_burst_of_logins_and_sign_ups_is_told_when_to_retry() {
    let mesh = Mesh::start(DAY).await;
    let mut college = mesh.college(0).await;
    // Cheap attempts count too (the bound is checked before anything else):
    // a malformed email costs no password hash.
    for _ in 0..grantmesh_college::PEER_ATTEMPT_BURST {
        let refused = college
            .login(LoginRequest {
                email: "not-an-email".into(),
                password: "whatever".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    // The bucket refills by one attempt every 200 ms; on a loaded machine
    // the burst above may take longer than that, so an attempt or two may
    // still pass before the refusal. Without the bound none would be refused.
    let mut held = None;
    for _ in 0..10 {
        if let Err(refused) = college
            .register_researcher(RegisterResearcherRequest {
                name: "Late".into(),
                email: "late@university.edu".into(),
                password: "quartz heron battery staple".into(),
            })
            .await
        {
            held = Some(refused);
            break;
        }
    }
    let held = held.expect("sign-ups past the burst are refused");
    assert_eq!(held.code(), Code::ResourceExhausted, "{held:?}");
    assert!(held.message().contains("from your address"), "{held:?}");
    let mut held = None;
    for _ in 0..10 {
        let refused = college
            .login(LoginRequest {
                email: "late@university.edu".into(),
                password: "not the password at all".into(),
            })
            .await
            .unwrap_err();
        if refused.code() != Code::Unauthenticated {
            held = Some(refused);
            break;
        }
    }
    let held = held.expect("logins past the burst are refused");
    assert_eq!(held.code(), Code::ResourceExhausted, "{held:?}");
    assert!(held.message().contains("retry in"), "{held:?}");
    // The other college instance keeps its own count.
    mesh.college(1)
        .await
        .register_researcher(RegisterResearcherRequest {
            name: "Late".into(),
            email: "late@university.edu".into(),
            password: "quartz heron battery staple".into(),
        })
        .await
        .expect("another instance is not held back");
}

#[tokio::test]
async fn an_invitation_tells_nothing_of_the_email_and_makes_a_member_only_once_accepted() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let (grace, grace_token) = mesh.researcher("grace").await;
    let (_, mallory_token) = mesh.researcher("mallory").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let grace_email = student_email_of(&mesh, &grace).await;
    let mut college = mesh.college(0).await;
    let invite = |email: &str| {
        authed(
            AddMemberRequest {
                account_id: account.clone(),
                email: email.into(),
            },
            &pi_token,
        )
    };

    // A registered email and an unregistered one: the same kind of answer.
    let nobody = format!("nobody-{}@university.edu", uuid::Uuid::new_v4().simple());
    let first = college
        .add_member(invite(&grace_email))
        .await
        .unwrap()
        .into_inner();
    let second = college
        .add_member(invite(&nobody))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.members.len(), 1, "invited is not a member");
    assert_eq!(second.members.len(), 1);
    let emails: Vec<_> = second
        .invitations
        .iter()
        .map(|i| i.email.as_str())
        .collect();
    assert!(emails.contains(&grace_email.as_str()) && emails.contains(&nobody.as_str()));
    let again = college
        .add_member(invite(&grace_email))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.invitations.len(), 2, "inviting twice changes nothing");

    // Not a member until she accepts (the account is as hidden from her as
    // from anyone); only she can accept.
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account.clone(),
                },
                &grace_token,
            ))
            .await,
        Code::NotFound,
        "does not exist",
    );
    let hers = college
        .list_invitations(authed(ListInvitationsRequest {}, &grace_token))
        .await
        .unwrap()
        .into_inner()
        .invitations;
    assert_eq!(hers.len(), 1);
    assert_eq!(
        (hers[0].account_id.as_str(), hers[0].account_title.as_str()),
        (account.as_str(), "Test account")
    );
    let id = hers[0].invitation_id.clone();
    let accept = |token: &str| {
        authed(
            AcceptInvitationRequest {
                invitation_id: id.clone(),
            },
            token,
        )
    };
    assert_status(
        college.accept_invitation(accept(&mallory_token)).await,
        Code::NotFound,
        "not yours",
    );
    assert!(
        college
            .list_invitations(authed(ListInvitationsRequest {}, &mallory_token))
            .await
            .unwrap()
            .into_inner()
            .invitations
            .is_empty()
    );
    let joined = college
        .accept_invitation(accept(&grace_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.members.len(), 2);
    assert_status(
        college.accept_invitation(accept(&grace_token)).await,
        Code::NotFound,
        "does not exist",
    );
    // The PI sees only the invitation still pending.
    let seen = college
        .get_account(authed(
            GetAccountRequest {
                account_id: account.clone(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        seen.invitations
            .iter()
            .map(|i| i.email.as_str())
            .collect::<Vec<_>>(),
        vec![nobody.as_str()]
    );
    // Members do not see who is invited.
    let as_member = college
        .get_account(authed(
            GetAccountRequest {
                account_id: account.clone(),
            },
            &grace_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(as_member.invitations.is_empty());

    // A declined invitation is gone; a stranger cannot decline it.
    let pending = seen.invitations[0].invitation_id.clone();
    let decline = |token: &str| {
        authed(
            DeclineInvitationRequest {
                invitation_id: pending.clone(),
            },
            token,
        )
    };
    assert_status(
        college.decline_invitation(decline(&mallory_token)).await,
        Code::NotFound,
        "not yours",
    );
    college
        .decline_invitation(decline(&pi_token))
        .await
        .unwrap();
    assert_status(
        college.decline_invitation(decline(&pi_token)).await,
        Code::NotFound,
        "does not exist",
    );
}

#[tokio::test]
async fn pending_invitations_are_bounded_per_account() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut college = mesh.college(0).await;
    let invite = |n: i64| {
        authed(
            AddMemberRequest {
                account_id: account.clone(),
                email: format!("invitee-{n}@university.edu"),
            },
            &pi_token,
        )
    };
    let limit = grantmesh_college::store::MAX_PENDING_INVITATIONS;
    for n in 0..limit {
        college.add_member(invite(n)).await.unwrap();
    }
    assert_status(
        college.add_member(invite(limit)).await,
        Code::ResourceExhausted,
        "pending invitations",
    );
    let count: i64 = mesh
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM invitations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, limit, "the refused one was not recorded");
}
